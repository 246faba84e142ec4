//! AdamW with its moments kept as named tensors, so a checkpoint holds the full optimizer state
//! and a resumed run continues exactly where it stopped (candle-nn's AdamW keeps them private).

use crate::error::Result;
use candle_core::{backprop::GradStore, Tensor, Var};
use std::collections::HashMap;

/// Hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct AdamWParams {
    /// Learning rate (changed per step by the schedule).
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay (applied to matrices only).
    pub weight_decay: f64,
}

/// The optimizer over named variables.
pub struct AdamW {
    vars: Vec<(String, Var)>,
    m: HashMap<String, Tensor>,
    v: HashMap<String, Tensor>,
    /// Number of updates applied so far.
    pub step: usize,
    /// Hyper-parameters.
    pub params: AdamWParams,
}

impl AdamW {
    /// A fresh optimizer with zero moments.
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        let mut m = HashMap::new();
        let mut v = HashMap::new();
        for (name, var) in &vars {
            m.insert(name.clone(), var.as_tensor().zeros_like()?);
            v.insert(name.clone(), var.as_tensor().zeros_like()?);
        }
        Ok(Self { vars, m, v, step: 0, params })
    }

    /// Applies one update from `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(self.step as i32);
        let bc2 = 1.0 - p.beta2.powi(self.step as i32);
        for (name, var) in &self.vars {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let m = (self.m[name].affine(p.beta1, 0.0)? + g.affine(1.0 - p.beta1, 0.0)?)?;
            let v = (self.v[name].affine(p.beta2, 0.0)? + g.sqr()?.affine(1.0 - p.beta2, 0.0)?)?;
            let upd = ((m.affine(1.0 / bc1, 0.0)?) / (v.affine(1.0 / bc2, 0.0)?.sqrt()? + p.eps)?)?;
            let decay = if var.as_tensor().rank() >= 2 { p.weight_decay } else { 0.0 };
            let new = (var.as_tensor().affine(1.0 - p.lr * decay, 0.0)? - upd.affine(p.lr, 0.0)?)?;
            var.set(&new)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(())
    }

    /// The moments as named tensors (`m.NAME`, `v.NAME`) for a checkpoint.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (k, t) in &self.m {
            out.insert(format!("m.{k}"), t.clone());
        }
        for (k, t) in &self.v {
            out.insert(format!("v.{k}"), t.clone());
        }
        out
    }

    /// Restores moments saved by `state_tensors`.
    pub fn load_state(&mut self, saved: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for (name, _) in &self.vars {
            if let (Some(m), Some(v)) = (saved.get(&format!("m.{name}")), saved.get(&format!("v.{name}"))) {
                self.m.insert(name.clone(), m.clone());
                self.v.insert(name.clone(), v.clone());
            }
        }
        self.step = step;
        Ok(())
    }
}
