//! Lenient TOML values: list keys written the ways the command line takes them
//! (`thresholds = [0.9, 0.5]`, `thresholds = "0.9:0.5:0.1"`, `thresholds = 0.9`,
//! `measure = "softmax-diff,saturation"`, `threads = 2` or `threads = [1, 2]`); typed values are
//! parsed with the flags' own parser. Used as `deserialize_with` helpers by the schema.

use serde::{Deserialize, Deserializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(i64),
    Float(f64),
    Str(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(Scalar),
    Many(Vec<Scalar>),
}

fn text(s: Scalar) -> Vec<String> {
    match s {
        Scalar::Int(i) => vec![i.to_string()],
        Scalar::Float(f) => vec![format!("{f}")],
        Scalar::Str(s) => s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect(),
    }
}

fn items<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let v = Option::<OneOrMany>::deserialize(d).map_err(|_| serde::de::Error::custom("expected a string, a number or a list of them"))?;
    Ok(v.map(|v| match v {
        OneOrMany::One(s) => text(s),
        OneOrMany::Many(v) => v.into_iter().flat_map(text).collect(),
    }))
}

/// A string (comma-separated), a number, or a list of strings and numbers.
pub fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    items(d)
}

/// Like [`strings`], each item parsed as the flag parses it (measures, dtypes, backends...).
pub fn list<'de, D: Deserializer<'de>, T: std::str::FromStr>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    T::Err: std::fmt::Display,
{
    match items(d)? {
        None => Ok(None),
        Some(v) => v.iter().map(|x| x.parse::<T>().map_err(serde::de::Error::custom)).collect::<Result<Vec<T>, _>>().map(Some),
    }
}

/// A non-negative integer or a list of them.
pub fn counts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<usize>>, D::Error> {
    let v = Option::<OneOrMany>::deserialize(d).map_err(|_| serde::de::Error::custom("expected a whole number or a list of them"))?;
    let one = |s: Scalar| match s {
        Scalar::Int(i) if i >= 0 => Ok(i as usize),
        Scalar::Str(t) => t.trim().parse::<usize>().map_err(|_| serde::de::Error::custom(format!("`{t}` is not a whole number"))),
        _ => Err(serde::de::Error::custom("expected a whole number ≥ 0")),
    };
    match v {
        None => Ok(None),
        Some(OneOrMany::One(s)) => Ok(Some(vec![one(s)?])),
        Some(OneOrMany::Many(v)) => v.into_iter().map(one).collect::<Result<Vec<_>, _>>().map(Some),
    }
}
