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
/// (counted only: BYTES tensors of encoded images travel in binary).
pub enum TensorData {
    Numbers(Vec<f32>),
    Strings(usize),
}

impl<'de> Deserialize<'de> for TensorData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut data = Flat { numbers: Vec::new(), strings: 0 };
        d.deserialize_any(FlatSeed { out: &mut data, depth: 0 })?;
        if !data.numbers.is_empty() && data.strings > 0 {
            return Err(serde::de::Error::custom("tensor data mixes numbers and strings"));
        }
        Ok(if data.strings == 0 { TensorData::Numbers(data.numbers) } else { TensorData::Strings(data.strings) })
    }
}

struct Flat {
    numbers: Vec<f32>,
    strings: usize,
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
        self.out.numbers.push(v as f32);
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.out.numbers.push(v as f32);
        Ok(())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.out.numbers.push(v as f32);
        Ok(())
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.out.strings += 1;
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth == MAX_DEPTH {
            return Err(serde::de::Error::custom("tensor data nested deeper than 8 levels"));
        }
        while seq.next_element_seed(FlatSeed { out: &mut *self.out, depth: self.depth + 1 })?.is_some() {}
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
