//! The JSON form of an inference request (KServe v2 REST), parsed without building a
//! `serde_json::Value` per number: tensor `data` is flattened, nested or not, straight
//! into a vector.

use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::{Map, Value};

#[derive(Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    pub inputs: Vec<InferInput>,
    #[serde(default)]
    pub outputs: Vec<InferOutput>,
}

#[derive(Deserialize)]
pub struct InferInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    #[serde(default)]
    pub data: Option<TensorData>,
}

#[derive(Deserialize)]
pub struct InferOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

/// A tensor's `data`: numbers in row-major order however deeply nested, or strings
/// (counted only: BYTES tensors of encoded images travel in binary). Nested arrays must
/// be regular (every array at one depth of one length, every value at one depth); the
/// shape they form is `nesting`, one length per depth (one entry for flat data).
pub enum TensorData {
    Numbers { values: Vec<f32>, nesting: Vec<usize> },
    Strings(usize),
}

impl TensorData {
    /// Bytes of memory the data holds.
    pub fn bytes(&self) -> usize {
        match self {
            TensorData::Numbers { values, .. } => 4 * values.capacity(),
            TensorData::Strings(_) => 0,
        }
    }
}

impl<'de> Deserialize<'de> for TensorData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut data = Flat { numbers: Vec::new(), strings: 0, lengths: Vec::new(), leaf_depth: None };
        d.deserialize_any(FlatSeed { out: &mut data, depth: 0 })?;
        if !data.numbers.is_empty() && data.strings > 0 {
            return Err(serde::de::Error::custom("tensor data mixes numbers and strings"));
        }
        Ok(if data.strings == 0 {
            // Every depth above a value holds an array, so every length is known.
            TensorData::Numbers { values: data.numbers, nesting: data.lengths.into_iter().flatten().collect() }
        } else {
            TensorData::Strings(data.strings)
        })
    }
}

struct Flat {
    numbers: Vec<f32>,
    strings: usize,
    /// The length of the arrays at each depth, as the first array there had it.
    lengths: Vec<Option<usize>>,
    /// The depth of the first value.
    leaf_depth: Option<usize>,
}

impl Flat {
    /// Every value must sit at the depth of the first: `[1, [2]]` is ragged.
    fn leaf<E: serde::de::Error>(&mut self, depth: usize) -> Result<(), E> {
        match self.leaf_depth {
            None => self.leaf_depth = Some(depth),
            Some(d) if d != depth => {
                return Err(E::custom(format!(
                    "tensor data is ragged: values nested {depth} deep beside values nested {d} deep"
                )));
            }
            Some(_) => {}
        }
        Ok(())
    }
}

/// Nesting deeper than any tensor's rank is refused (serde_json stops at 128 anyway).
const MAX_DEPTH: usize = 8;

struct FlatSeed<'a> {
    out: &'a mut Flat,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for FlatSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FlatSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("numbers or strings, in arrays nested at most 8 deep")
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.out.leaf(self.depth)?;
        self.out.numbers.push(v as f32);
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.out.leaf(self.depth)?;
        self.out.numbers.push(v as f32);
        Ok(())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.out.leaf(self.depth)?;
        self.out.numbers.push(v as f32);
        Ok(())
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.out.leaf(self.depth)?;
        self.out.strings += 1;
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth == MAX_DEPTH {
            return Err(serde::de::Error::custom("tensor data nested deeper than 8 levels"));
        }
        let mut len = 0;
        while seq.next_element_seed(FlatSeed { out: &mut *self.out, depth: self.depth + 1 })?.is_some() {
            len += 1;
        }
        // Arrays finish innermost first, so depths are filled in any order.
        let lengths = &mut self.out.lengths;
        if lengths.len() <= self.depth {
            lengths.resize(self.depth + 1, None);
        }
        match lengths[self.depth] {
            None => lengths[self.depth] = Some(len),
            Some(first) if first != len => {
                return Err(serde::de::Error::custom(format!(
                    "tensor data is ragged: an array of {len} beside arrays of {first} at depth {}",
                    self.depth
                )));
            }
            Some(_) => {}
        }
        Ok(())
    }
}

/// An integer parameter, if present; a parameter of another type is an error.
pub fn int_param(params: &Map<String, Value>, key: &str) -> Result<Option<i64>, String> {
    match params.get(key) {
        None => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| format!("parameter {key:?} must be an integer, not {v}")),
    }
}

/// A boolean parameter, if present.
pub fn bool_param(params: &Map<String, Value>, key: &str) -> Result<Option<bool>, String> {
    match params.get(key) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| format!("parameter {key:?} must be true or false, not {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::TensorData;

    fn parse(text: &str) -> Result<(Vec<f32>, Vec<usize>), String> {
        match serde_json::from_str::<TensorData>(text).map_err(|e| e.to_string())? {
            TensorData::Numbers { values, nesting } => Ok((values, nesting)),
            TensorData::Strings(n) => Err(format!("{n} strings")),
        }
    }

    #[test]
    fn regular_nesting_is_flattened_with_its_shape() {
        assert_eq!(parse("[1, 2, 3]").unwrap(), (vec![1.0, 2.0, 3.0], vec![3]));
        assert_eq!(parse("[[1, 2], [3, 4], [5, 6]]").unwrap(), (vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], vec![3, 2]));
        assert_eq!(parse("[[[1]], [[2]]]").unwrap(), (vec![1.0, 2.0], vec![2, 1, 1]));
        assert_eq!(parse("[[], []]").unwrap(), (vec![], vec![2, 0]));
    }

    #[test]
    fn ragged_nesting_is_refused() {
        for ragged in ["[[1, 2], [3]]", "[[1], [2, 3]]", "[1, [2]]", "[[1], 2]", "[[[1, 2]], [[3]]]", "[[1, 2], []]"] {
            let e = parse(ragged).expect_err(ragged);
            assert!(e.contains("ragged"), "{ragged}: {e}");
        }
    }
}
