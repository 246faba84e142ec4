//! Named enums: each value's name (and aliases) written once, in [`named_enum!`], and used by
//! flags (clap), configuration files and records (serde), reports, CSV and error messages. One
//! case rule everywhere: names are written in lower case and read ignoring ASCII case and
//! surrounding spaces (`--dtype FP16`, `dtype = "BF16"` and a record's `"f16"` all parse).

/// `a`, `a or b`, `a, b or c`: the list an "unknown name" error offers.
pub fn expected<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// Defines a field-less enum whose values have names:
///
/// ```ignore
/// named_enum! {
///     /// Floating-point precision.
///     pub enum Precision: "dtype", "--dtype" {
///         /// 32-bit float.
///         F32 = "f32" | "fp32" | "float32",
///     }
/// }
/// ```
///
/// The first string is the canonical name, the others aliases; `"dtype"` names the kind of value
/// and `"--dtype"` the setting in "unknown dtype `x` (expected …)" errors. It derives `Debug`,
/// `Clone`, `Copy`, `PartialEq`, `Eq`, `Hash`, `PartialOrd`, `Ord` and implements `ALL`,
/// `name()`, `parse()`, `FromStr`, `Display`, serde (as the canonical name) and clap's
/// `ValueEnum` (args taking one should set `ignore_case = true`, the rule of [`self`]).
#[macro_export]
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident : $what:literal, $flag:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $canon:literal $(| $alias:literal)* ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The canonical name (what records, CSV, reports and help text show).
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $canon),+ }
            }

            /// Other names accepted on input.
            pub fn aliases(self) -> &'static [&'static str] {
                match self { $($name::$variant => &[$($alias),*]),+ }
            }

            /// Parses a name or alias, ignoring ASCII case and surrounding spaces.
            pub fn parse(s: &str) -> $crate::error::Result<Self> {
                let t = s.trim();
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.name().eq_ignore_ascii_case(t) || v.aliases().iter().any(|a| a.eq_ignore_ascii_case(t)))
                    .ok_or_else(|| $crate::error::Error::setting($flag, Self::unknown(t)))
            }

            /// "unknown dtype `x` (expected f32, f16 or bf16)".
            fn unknown(t: &str) -> String {
                format!("unknown {} `{}` (expected {})", $what, t, $crate::names::expected(Self::ALL.iter().map(|v| v.name())))
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::error::Error;
            fn from_str(s: &str) -> $crate::error::Result<Self> {
                $name::parse(s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::parse(&s).map_err(|_| serde::de::Error::custom(Self::unknown(s.trim())))
            }
        }

        impl clap::ValueEnum for $name {
            fn value_variants<'a>() -> &'a [Self] {
                Self::ALL
            }
            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.name()).aliases(self.aliases().iter().copied()))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::expected;

    crate::named_enum! {
        /// A test enum.
        pub enum Colour: "colour", "--colour" {
            /// Red.
            Red = "red" | "rouge",
            /// Light blue.
            LightBlue = "light-blue",
        }
    }

    #[test]
    fn names_parse_ignoring_case_and_round_trip_through_serde_and_clap() {
        assert_eq!(Colour::parse(" RED ").unwrap(), Colour::Red);
        assert_eq!(Colour::parse("Rouge").unwrap(), Colour::Red);
        assert_eq!(Colour::parse("light-blue").unwrap().to_string(), "light-blue");
        assert_eq!(serde_json::to_string(&Colour::LightBlue).unwrap(), "\"light-blue\"");
        assert_eq!(serde_json::from_str::<Colour>("\"LIGHT-BLUE\"").unwrap(), Colour::LightBlue);
        let err = Colour::parse("green").unwrap_err().to_string();
        assert!(err.contains("--colour") && err.contains("unknown colour `green` (expected red or light-blue)"), "{err}");
        assert!(serde_json::from_str::<Colour>("\"green\"").unwrap_err().to_string().contains("expected red or light-blue"));
        use clap::ValueEnum;
        assert_eq!(Colour::from_str("ROUGE", true).unwrap(), Colour::Red);
        assert_eq!(expected(["a", "b", "c"]), "a, b or c");
        assert_eq!(expected(["a"]), "a");
    }
}
