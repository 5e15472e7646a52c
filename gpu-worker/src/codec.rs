//! Codecs between an envelope's JSON payload and [`Tensor`]s, chosen per actor.
//!
//! - [`CodecKind::Json`]: nested numeric arrays at the input pointer, e.g.
//!   `{"input": [[1, 2], [3, 4]]}`; the shape is inferred and must be rectangular, the
//!   values are converted to the configured dtype (`float32` by default).
//! - [`CodecKind::Base64`]: an object `{"dtype": "float32", "shape": [2, 2], "data": "..."}`
//!   at the input pointer, `data` being the standard base64 of the little-endian row-major
//!   bytes. For large inputs: no number parsing, a quarter more bytes than raw.
//!
//! The output is written at the output pointer in the same form, keeping the rest of the
//! payload and creating missing objects on the way. Every error concerns one payload only
//! and says what was expected, so a bad input fails its own envelope and nothing else.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Number, Value};

use crate::tensor::{DType, Element, Tensor};

/// How tensors are carried in the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CodecKind {
    /// Nested JSON arrays of numbers.
    #[default]
    Json,
    /// `{"dtype", "shape", "data"}` with base64 little-endian bytes.
    Base64,
}

impl FromStr for CodecKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(CodecKind::Json),
            "base64" => Ok(CodecKind::Base64),
            other => Err(format!("codec {other:?}: expected json or base64")),
        }
    }
}

/// One dimension of an expected shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// Any size (`*`).
    Any,
    /// Exactly this size.
    Fixed(usize),
}

/// The expected shape of one input, without the batch dimension the batcher adds.
///
/// Written like `[*, 4]` or `*,4`; `*` matches any size, and the rank must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeSpec(pub Vec<Dim>);

impl ShapeSpec {
    /// Whether `shape` has this rank and these fixed sizes.
    pub fn matches(&self, shape: &[usize]) -> bool {
        self.0.len() == shape.len()
            && self.0.iter().zip(shape).all(|(d, &n)| match d {
                Dim::Any => true,
                Dim::Fixed(m) => *m == n,
            })
    }
}

impl fmt::Display for ShapeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match d {
                Dim::Any => f.write_str("*")?,
                Dim::Fixed(n) => write!(f, "{n}")?,
            }
        }
        f.write_str("]")
    }
}

impl FromStr for ShapeSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let inner = s.trim();
        let inner = inner
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(inner)
            .trim();
        if inner.is_empty() {
            return Ok(ShapeSpec(Vec::new()));
        }
        inner
            .split(',')
            .map(|d| match d.trim() {
                "*" => Ok(Dim::Any),
                n => n.parse().map(Dim::Fixed).map_err(|_| {
                    format!("shape {s:?}: dimension {n:?} is neither * nor a non-negative integer")
                }),
            })
            .collect::<Result<_, _>>()
            .map(ShapeSpec)
    }
}

/// A codec configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{which} pointer {pointer:?} is not a JSON pointer: it must be empty or start with /")]
pub struct PointerError {
    /// `input` or `output`.
    pub which: &'static str,
    /// The pointer given.
    pub pointer: String,
}

/// Why one payload could not be decoded or encoded. The message names the pointer and what
/// was expected; it is meant for the envelope's `status.error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Nothing at the input pointer.
    #[error("input at {pointer}: missing, expected {expected}")]
    Missing {
        /// The input pointer.
        pointer: String,
        /// What should have been there.
        expected: String,
    },
    /// The input is not in the codec's form (ragged, not numbers, bad base64, ...).
    #[error("input at {pointer}: {reason}")]
    Malformed {
        /// The input pointer.
        pointer: String,
        /// What is wrong, naming the offending element's pointer where there is one.
        reason: String,
    },
    /// The input is well formed but of another shape or dtype than the actor expects.
    #[error("input at {pointer}: expected {expected}, got {got}")]
    Mismatch {
        /// The input pointer.
        pointer: String,
        /// The expected shape and dtype, e.g. `shape [*, 4] of float32`.
        expected: String,
        /// What came, e.g. `[3, 5]`.
        got: String,
    },
    /// The output cannot be written (a non-finite float in JSON, a path through a scalar).
    #[error("output at {pointer}: {reason}")]
    Output {
        /// The output pointer.
        pointer: String,
        /// What is wrong.
        reason: String,
    },
}

/// One actor's codec: where its input is, in which form, of what shape and dtype, and where
/// its output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecConfig {
    kind: CodecKind,
    input_pointer: String,
    output_pointer: String,
    shape: Option<ShapeSpec>,
    dtype: DType,
}

fn check_pointer(which: &'static str, pointer: &str) -> Result<(), PointerError> {
    if pointer.is_empty() || pointer.starts_with('/') {
        Ok(())
    } else {
        Err(PointerError {
            which,
            pointer: pointer.to_owned(),
        })
    }
}

impl CodecConfig {
    /// A codec reading at `input_pointer` and writing at `output_pointer` (RFC 6901 JSON
    /// pointers, e.g. `/input`; `""` is the whole payload), expecting `float32` of any shape.
    pub fn new(
        kind: CodecKind,
        input_pointer: impl Into<String>,
        output_pointer: impl Into<String>,
    ) -> Result<Self, PointerError> {
        let (input_pointer, output_pointer) = (input_pointer.into(), output_pointer.into());
        check_pointer("input", &input_pointer)?;
        check_pointer("output", &output_pointer)?;
        Ok(CodecConfig {
            kind,
            input_pointer,
            output_pointer,
            shape: None,
            dtype: DType::F32,
        })
    }

    /// Expects inputs of this shape (without the batch dimension).
    pub fn with_shape(mut self, shape: ShapeSpec) -> Self {
        self.shape = Some(shape);
        self
    }

    /// Expects inputs of this dtype: the JSON codec converts to it, the base64 codec
    /// requires it.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// The form tensors take in the payload.
    pub fn kind(&self) -> CodecKind {
        self.kind
    }

    /// Where the input is read.
    pub fn input_pointer(&self) -> &str {
        &self.input_pointer
    }

    /// Where the output is written.
    pub fn output_pointer(&self) -> &str {
        &self.output_pointer
    }

    /// The expected input shape, if any.
    pub fn shape(&self) -> Option<&ShapeSpec> {
        self.shape.as_ref()
    }

    /// The expected input dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `shape [*, 4] of float32`, or `float32 of any shape`.
    fn expected(&self) -> String {
        match &self.shape {
            Some(s) => format!("shape {s} of {}", self.dtype),
            None => format!("{} of any shape", self.dtype),
        }
    }

    fn malformed(&self, reason: impl Into<String>) -> CodecError {
        CodecError::Malformed {
            pointer: self.input_pointer.clone(),
            reason: reason.into(),
        }
    }

    /// Reads the input tensor from `payload`.
    pub fn decode(&self, payload: &Value) -> Result<Tensor, CodecError> {
        let value = payload
            .pointer(&self.input_pointer)
            .ok_or_else(|| CodecError::Missing {
                pointer: self.input_pointer.clone(),
                expected: match self.kind {
                    CodecKind::Json => format!("a numeric array of {}", self.expected()),
                    CodecKind::Base64 => format!("{{dtype, shape, data}} of {}", self.expected()),
                },
            })?;
        let tensor = match self.kind {
            CodecKind::Json => self.decode_json(value)?,
            CodecKind::Base64 => self.decode_base64(value)?,
        };
        let shape_ok = self.shape.as_ref().is_none_or(|s| s.matches(tensor.shape()));
        if !shape_ok || tensor.dtype() != self.dtype {
            let got = if tensor.dtype() == self.dtype {
                format!("{:?}", tensor.shape())
            } else {
                format!("{:?} of {}", tensor.shape(), tensor.dtype())
            };
            return Err(CodecError::Mismatch {
                pointer: self.input_pointer.clone(),
                expected: self.expected(),
                got,
            });
        }
        Ok(tensor)
    }

    fn decode_json(&self, value: &Value) -> Result<Tensor, CodecError> {
        // The first element of each level gives the shape; the walk then checks every other
        // element against it, so a ragged array is named where it goes wrong.
        let mut shape = Vec::new();
        let mut probe = value;
        while let Value::Array(items) = probe {
            shape.push(items.len());
            match items.first() {
                Some(first) => probe = first,
                None => break,
            }
        }
        let mut walk = Walk {
            config: self,
            shape: &shape,
            path: Vec::new(),
            data: Vec::new(),
        };
        walk.visit(value)?;
        let data = walk.data;
        Tensor::from_le_bytes(self.dtype, shape, data).map_err(|e| self.malformed(e.to_string()))
    }

    fn decode_base64(&self, value: &Value) -> Result<Tensor, CodecError> {
        let Value::Object(obj) = value else {
            return Err(self.malformed(format!(
                "expected an object {{\"dtype\", \"shape\", \"data\"}}, got {}",
                kind_of(value)
            )));
        };
        let field = |name: &str| {
            obj.get(name)
                .ok_or_else(|| self.malformed(format!("missing field {name:?}")))
        };
        let dtype: DType = field("dtype")?
            .as_str()
            .ok_or_else(|| self.malformed("field \"dtype\" must be a string such as \"float32\""))?
            .parse()
            .map_err(|e: crate::tensor::UnknownDType| self.malformed(e.to_string()))?;
        let shape = field("shape")?
            .as_array()
            .and_then(|dims| {
                dims.iter()
                    .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect()
            })
            .ok_or_else(|| self.malformed("field \"shape\" must be an array of non-negative integers"))?;
        let data = field("data")?
            .as_str()
            .ok_or_else(|| self.malformed("field \"data\" must be a base64 string"))?;
        let bytes = STANDARD
            .decode(data)
            .map_err(|e| self.malformed(format!("field \"data\" is not valid base64: {e}")))?;
        Tensor::from_le_bytes(dtype, shape, bytes).map_err(|e| self.malformed(e.to_string()))
    }

    /// Writes `tensor` at the output pointer of `payload`, keeping everything else and
    /// creating missing objects on the way.
    pub fn encode(&self, payload: &mut Value, tensor: &Tensor) -> Result<(), CodecError> {
        let value = match self.kind {
            CodecKind::Json => self.encode_json(tensor)?,
            CodecKind::Base64 => encode_base64(tensor),
        };
        self.write(payload, value)
    }

    fn output_error(&self, reason: impl Into<String>) -> CodecError {
        CodecError::Output {
            pointer: self.output_pointer.clone(),
            reason: reason.into(),
        }
    }

    fn encode_json(&self, tensor: &Tensor) -> Result<Value, CodecError> {
        let values: Vec<Value> = match tensor.dtype() {
            DType::F32 => numbers(tensor, |x: f32| {
                // Through the shortest decimal of the f32, so 0.1f32 is written 0.1 and not
                // 0.10000000149011612.
                x.to_string().parse::<f64>().ok().and_then(Number::from_f64)
            }),
            DType::F64 => numbers(tensor, Number::from_f64),
            DType::I64 => numbers(tensor, |x: i64| Some(Number::from(x))),
            DType::I32 => numbers(tensor, |x: i32| Some(Number::from(x))),
            DType::U8 => numbers(tensor, |x: u8| Some(Number::from(x))),
        }
        .map_err(|index| {
            self.output_error(format!(
                "element {index} is not finite, which JSON cannot carry; use the base64 codec"
            ))
        })?;
        let mut values = values.into_iter();
        Ok(nest(&mut values, tensor.shape()))
    }

    fn write(&self, payload: &mut Value, value: Value) -> Result<(), CodecError> {
        if self.output_pointer.is_empty() {
            *payload = value;
            return Ok(());
        }
        let tokens: Vec<String> = self.output_pointer[1..]
            .split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        let (last, parents) = tokens
            .split_last()
            .ok_or_else(|| self.output_error("empty pointer"))?;
        let mut here = payload;
        let mut at = String::new();
        for token in parents {
            if here.is_null() {
                *here = Value::Object(Map::new());
            }
            here = match here {
                Value::Object(map) => map.entry(token.clone()).or_insert(Value::Null),
                Value::Array(items) => {
                    let len = items.len();
                    token
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| items.get_mut(i))
                        .ok_or_else(|| {
                            self.output_error(format!(
                                "{at:?} is an array of {len}, it has no element {token:?}"
                            ))
                        })?
                }
                other => {
                    return Err(self.output_error(format!("{at:?} is {}, not an object", kind_of(other))));
                }
            };
            at.push('/');
            at.push_str(token);
        }
        if here.is_null() {
            *here = Value::Object(Map::new());
        }
        match here {
            Value::Object(map) => {
                map.insert(last.clone(), value);
            }
            Value::Array(items) => {
                let len = items.len();
                if last == "-" {
                    items.push(value);
                } else {
                    let slot = last
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| items.get_mut(i))
                        .ok_or_else(|| {
                            self.output_error(format!(
                                "{at:?} is an array of {len}, it has no element {last:?}"
                            ))
                        })?;
                    *slot = value;
                }
            }
            other => {
                return Err(self.output_error(format!("{at:?} is {}, not an object", kind_of(other))));
            }
        }
        Ok(())
    }
}

/// The base64 form of a tensor.
fn encode_base64(tensor: &Tensor) -> Value {
    let mut obj = Map::new();
    obj.insert("dtype".into(), Value::from(tensor.dtype().name()));
    obj.insert("shape".into(), Value::from(tensor.shape().to_vec()));
    obj.insert("data".into(), Value::from(STANDARD.encode(tensor.as_le_bytes())));
    Value::Object(obj)
}

/// JSON numbers of a tensor; `Err(index)` of the first one `to` refuses (non-finite).
fn numbers<T: Element>(tensor: &Tensor, to: impl Fn(T) -> Option<Number>) -> Result<Vec<Value>, usize> {
    // The codec only calls this with the tensor's own element type.
    let values = tensor.to_vec::<T>().map_err(|_| 0usize)?;
    values
        .into_iter()
        .enumerate()
        .map(|(i, x)| to(x).map(Value::Number).ok_or(i))
        .collect()
}

/// Nested arrays of `shape` from row-major values.
fn nest(values: &mut impl Iterator<Item = Value>, shape: &[usize]) -> Value {
    match shape.split_first() {
        None => values.next().unwrap_or(Value::Null),
        Some((&n, rest)) => Value::Array((0..n).map(|_| nest(values, rest)).collect()),
    }
}

/// `a string`, `an object`, ... for error messages.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The walk over nested arrays that checks rectangularity and collects little-endian bytes.
struct Walk<'a> {
    config: &'a CodecConfig,
    shape: &'a [usize],
    path: Vec<usize>,
    data: Vec<u8>,
}

impl Walk<'_> {
    /// The pointer of the element being visited.
    fn here(&self) -> String {
        let mut p = self.config.input_pointer.clone();
        for i in &self.path {
            p.push('/');
            p.push_str(&i.to_string());
        }
        p
    }

    fn visit(&mut self, value: &Value) -> Result<(), CodecError> {
        let depth = self.path.len();
        match (value, self.shape.get(depth)) {
            (Value::Array(items), Some(&len)) => {
                if items.len() != len {
                    return Err(self.config.malformed(format!(
                        "ragged array: {} has {} elements, expected {len} like its first sibling",
                        self.here(),
                        items.len()
                    )));
                }
                for (i, item) in items.iter().enumerate() {
                    self.path.push(i);
                    self.visit(item)?;
                    self.path.pop();
                }
                Ok(())
            }
            (Value::Number(n), None) => self.push(n),
            (other, Some(&len)) => Err(self.config.malformed(format!(
                "ragged array: {} is {}, expected an array of {len}",
                self.here(),
                kind_of(other)
            ))),
            (Value::Array(_), None) => Err(self.config.malformed(format!(
                "ragged array: {} is an array, expected a number like its first sibling",
                self.here()
            ))),
            (other, None) => Err(self.config.malformed(format!(
                "{} is {}, expected a number",
                self.here(),
                kind_of(other)
            ))),
        }
    }

    fn push(&mut self, n: &Number) -> Result<(), CodecError> {
        let dtype = self.config.dtype;
        let ok = match dtype {
            DType::F32 => n
                .as_f64()
                .map(|x| x as f32)
                .filter(|x| x.is_finite())
                .map(|x| x.put_le(&mut self.data)),
            DType::F64 => n.as_f64().map(|x| x.put_le(&mut self.data)),
            DType::I64 => n.as_i64().map(|x| x.put_le(&mut self.data)),
            DType::I32 => n
                .as_i64()
                .and_then(|x| i32::try_from(x).ok())
                .map(|x| x.put_le(&mut self.data)),
            DType::U8 => n
                .as_u64()
                .and_then(|x| u8::try_from(x).ok())
                .map(|x| x.put_le(&mut self.data)),
        };
        ok.ok_or_else(|| {
            self.config
                .malformed(format!("{} = {n} is not a valid {dtype}", self.here()))
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn json_codec() -> CodecConfig {
        CodecConfig::new(CodecKind::Json, "/input", "/output").unwrap()
    }

    fn b64_codec() -> CodecConfig {
        CodecConfig::new(CodecKind::Base64, "/input", "/output").unwrap()
    }

    #[test]
    fn json_decodes_nested_arrays_with_inferred_shape() {
        let t = json_codec()
            .decode(&json!({"input": [[1, 2.5, 3], [4, 5, 6]]}))
            .unwrap();
        assert_eq!(t.dtype(), DType::F32);
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.to_vec::<f32>().unwrap(), vec![1.0, 2.5, 3.0, 4.0, 5.0, 6.0]);

        let scalar = json_codec().decode(&json!({"input": 7})).unwrap();
        assert_eq!(scalar.shape(), &[] as &[usize]);
        let empty = json_codec().decode(&json!({"input": []})).unwrap();
        assert_eq!(empty.shape(), &[0]);
    }

    #[test]
    fn json_decodes_into_the_configured_dtype() {
        let c = json_codec().with_dtype(DType::I64);
        let t = c.decode(&json!({"input": [1, -2, 3]})).unwrap();
        assert_eq!(t.to_vec::<i64>().unwrap(), vec![1, -2, 3]);
        let err = c.decode(&json!({"input": [1, 2.5]})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "input at /input: /input/1 = 2.5 is not a valid int64"
        );
        let err = json_codec()
            .with_dtype(DType::U8)
            .decode(&json!({"input": [[1, 256]]}))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "input at /input: /input/0/1 = 256 is not a valid uint8"
        );
        let err = json_codec().decode(&json!({"input": [1e300]})).unwrap_err();
        assert!(err.to_string().contains("is not a valid float32"), "{err}");
    }

    #[test]
    fn json_rejects_ragged_and_non_numeric_arrays() {
        let c = json_codec();
        let cases = [
            (
                json!({"input": [[1, 2, 3], [4, 5]]}),
                "ragged array: /input/1 has 2 elements, expected 3",
            ),
            (
                json!({"input": [[1, 2], 3]}),
                "ragged array: /input/1 is a number, expected an array of 2",
            ),
            (
                json!({"input": [1, [2]]}),
                "ragged array: /input/1 is an array, expected a number",
            ),
            (
                json!({"input": [[1, "x"]]}),
                "/input/0/1 is a string, expected a number",
            ),
            (
                json!({"input": {"a": 1}}),
                "/input is an object, expected a number",
            ),
        ];
        for (payload, want) in cases {
            let err = c.decode(&payload).unwrap_err();
            assert!(matches!(err, CodecError::Malformed { .. }), "{err:?}");
            assert!(err.to_string().starts_with("input at /input: "), "{err}");
            assert!(err.to_string().contains(want), "{err} should contain {want}");
        }
    }

    #[test]
    fn missing_input_says_what_was_expected() {
        let c = json_codec().with_shape("[*, 4]".parse().unwrap());
        assert_eq!(
            c.decode(&json!({"other": 1})).unwrap_err().to_string(),
            "input at /input: missing, expected a numeric array of shape [*, 4] of float32"
        );
    }

    #[test]
    fn wrong_shape_says_what_was_expected() {
        let c = json_codec().with_shape("[*, 4]".parse().unwrap());
        let row = json!([1, 2, 3, 4, 5]);
        let err = c
            .decode(&json!({"input": [row.clone(), row.clone(), row]}))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "input at /input: expected shape [*, 4] of float32, got [3, 5]"
        );
        // Rank counts too.
        let err = c.decode(&json!({"input": [1, 2, 3, 4]})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "input at /input: expected shape [*, 4] of float32, got [4]"
        );
        assert!(c.decode(&json!({"input": [[1, 2, 3, 4]]})).is_ok());
    }

    #[test]
    fn shape_spec_parses_and_prints() {
        let s: ShapeSpec = "[*, 3, 224, 224]".parse().unwrap();
        assert_eq!(
            s.0,
            vec![Dim::Any, Dim::Fixed(3), Dim::Fixed(224), Dim::Fixed(224)]
        );
        assert_eq!(s.to_string(), "[*, 3, 224, 224]");
        assert_eq!("*,4".parse::<ShapeSpec>().unwrap().to_string(), "[*, 4]");
        assert_eq!("[]".parse::<ShapeSpec>().unwrap(), ShapeSpec(vec![]));
        assert!("[x]".parse::<ShapeSpec>().is_err());
        assert!("[-1]".parse::<ShapeSpec>().is_err());
    }

    #[test]
    fn pointers_are_checked() {
        assert_eq!(
            CodecConfig::new(CodecKind::Json, "input", "/o")
                .unwrap_err()
                .to_string(),
            "input pointer \"input\" is not a JSON pointer: it must be empty or start with /"
        );
        assert!(CodecConfig::new(CodecKind::Json, "/i", "o").is_err());
        assert!(CodecConfig::new(CodecKind::Json, "", "").is_ok());
        assert_eq!("base64".parse::<CodecKind>().unwrap(), CodecKind::Base64);
        assert!("msgpack".parse::<CodecKind>().is_err());
    }

    #[test]
    fn json_encode_keeps_the_rest_of_the_payload() {
        let c = json_codec();
        let mut payload = json!({"input": [1, 2], "id": "x", "output": "old"});
        let t = Tensor::from_vec(vec![2, 2], &[0.1f32, 2.0, -3.5, 4.0]).unwrap();
        c.encode(&mut payload, &t).unwrap();
        assert_eq!(
            payload,
            json!({"input": [1, 2], "id": "x", "output": [[0.1, 2.0], [-3.5, 4.0]]})
        );
        // Round trip through decode at the output.
        let back = CodecConfig::new(CodecKind::Json, "/output", "/o")
            .unwrap()
            .decode(&payload)
            .unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn encode_creates_the_path() {
        let c = CodecConfig::new(CodecKind::Json, "/input", "/result/scores/~1last").unwrap();
        let mut payload = json!({"input": [1], "result": {"kept": true}});
        c.encode(&mut payload, &Tensor::from_vec(vec![], &[3i64]).unwrap())
            .unwrap();
        assert_eq!(
            payload,
            json!({"input": [1], "result": {"kept": true, "scores": {"/last": 3}}})
        );

        let mut null = Value::Null;
        c.encode(&mut null, &Tensor::from_vec(vec![1], &[1u8]).unwrap())
            .unwrap();
        assert_eq!(null, json!({"result": {"scores": {"/last": [1]}}}));

        let into_array = CodecConfig::new(CodecKind::Json, "/i", "/list/1").unwrap();
        let mut payload = json!({"list": [0, 0]});
        into_array
            .encode(&mut payload, &Tensor::from_vec(vec![], &[5i32]).unwrap())
            .unwrap();
        assert_eq!(payload, json!({"list": [0, 5]}));

        let whole = CodecConfig::new(CodecKind::Json, "/i", "").unwrap();
        let mut payload = json!({"i": 1});
        whole
            .encode(&mut payload, &Tensor::from_vec(vec![1], &[2.0f64]).unwrap())
            .unwrap();
        assert_eq!(payload, json!([2.0]));
    }

    #[test]
    fn encode_through_a_scalar_fails_clearly() {
        let c = CodecConfig::new(CodecKind::Json, "/input", "/input/0/x").unwrap();
        let mut payload = json!({"input": [1]});
        let err = c
            .encode(&mut payload, &Tensor::from_vec(vec![], &[1.0f32]).unwrap())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "output at /input/0/x: \"/input/0\" is a number, not an object"
        );
        let c = CodecConfig::new(CodecKind::Json, "/input", "/input/5").unwrap();
        let err = c
            .encode(&mut payload, &Tensor::from_vec(vec![], &[1.0f32]).unwrap())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("is an array of 1, it has no element \"5\""),
            "{err}"
        );
    }

    #[test]
    fn json_cannot_carry_non_finite_values() {
        let t = Tensor::from_vec(vec![2], &[1.0f32, f32::NAN]).unwrap();
        let err = json_codec().encode(&mut json!({}), &t).unwrap_err();
        assert_eq!(
            err.to_string(),
            "output at /output: element 1 is not finite, which JSON cannot carry; use the base64 codec"
        );
        // The base64 form carries them.
        let mut payload = json!({});
        b64_codec().encode(&mut payload, &t).unwrap();
        let back = CodecConfig::new(CodecKind::Base64, "/output", "/o")
            .unwrap()
            .decode(&payload)
            .unwrap();
        assert!(back.to_vec::<f32>().unwrap()[1].is_nan());
    }

    #[test]
    fn base64_round_trips_and_keeps_the_payload() {
        let t = Tensor::from_vec(vec![2, 3], &[1i64, 2, 3, -4, 5, i64::MAX]).unwrap();
        let c = b64_codec()
            .with_dtype(DType::I64)
            .with_shape("[*, 3]".parse().unwrap());
        let mut payload = json!({"keep": [1, 2], "input": null});
        c.encode(&mut payload, &t).unwrap();
        assert_eq!(payload["keep"], json!([1, 2]));
        assert_eq!(payload["output"]["dtype"], "int64");
        assert_eq!(payload["output"]["shape"], json!([2, 3]));
        let input = payload["output"].clone();
        payload["input"] = input;
        assert_eq!(c.decode(&payload).unwrap(), t);
    }

    #[test]
    fn base64_decodes_known_bytes() {
        // 1.0f32 and 2.0f32, little-endian.
        let data = STANDARD.encode([0, 0, 0x80, 0x3f, 0, 0, 0, 0x40]);
        let payload = json!({"input": {"dtype": "float32", "shape": [2], "data": data}});
        assert_eq!(
            b64_codec().decode(&payload).unwrap().to_vec::<f32>().unwrap(),
            vec![1.0, 2.0]
        );
    }

    #[test]
    fn base64_rejects_malformed_objects() {
        let c = b64_codec();
        let good = STANDARD.encode([0u8; 8]);
        let cases = [
            (
                json!({"input": [1, 2]}),
                "expected an object {\"dtype\", \"shape\", \"data\"}, got an array",
            ),
            (
                json!({"input": {"shape": [2], "data": good}}),
                "missing field \"dtype\"",
            ),
            (
                json!({"input": {"dtype": "float32", "data": good}}),
                "missing field \"shape\"",
            ),
            (
                json!({"input": {"dtype": "float32", "shape": [2]}}),
                "missing field \"data\"",
            ),
            (
                json!({"input": {"dtype": "bfloat16", "shape": [2], "data": good}}),
                "unknown dtype \"bfloat16\"",
            ),
            (
                json!({"input": {"dtype": 3, "shape": [2], "data": good}}),
                "\"dtype\" must be a string",
            ),
            (
                json!({"input": {"dtype": "float32", "shape": [-2], "data": good}}),
                "\"shape\" must be an array",
            ),
            (
                json!({"input": {"dtype": "float32", "shape": [2], "data": "@@not base64!!"}}),
                "not valid base64",
            ),
            (
                json!({"input": {"dtype": "float32", "shape": [2], "data": 12}}),
                "must be a base64 string",
            ),
            (
                json!({"input": {"dtype": "float32", "shape": [3], "data": good}}),
                "shape [3] of float32 needs 12 bytes (3 elements), got 8 bytes",
            ),
        ];
        for (payload, want) in cases {
            let err = c.decode(&payload).unwrap_err();
            assert!(matches!(err, CodecError::Malformed { .. }), "{err:?}");
            assert!(err.to_string().contains(want), "{err} should contain {want}");
        }
    }

    #[test]
    fn base64_checks_dtype_and_shape() {
        let data = STANDARD.encode([0u8; 24]);
        let payload = json!({"input": {"dtype": "int64", "shape": [3], "data": data}});
        let c = b64_codec().with_shape("[*, 4]".parse().unwrap());
        assert_eq!(
            c.decode(&payload).unwrap_err().to_string(),
            "input at /input: expected shape [*, 4] of float32, got [3] of int64"
        );
        let any_shape = b64_codec();
        assert_eq!(
            any_shape.decode(&payload).unwrap_err().to_string(),
            "input at /input: expected float32 of any shape, got [3] of int64"
        );
        assert!(b64_codec().with_dtype(DType::I64).decode(&payload).is_ok());
    }

    #[test]
    fn integer_tensors_encode_as_json_integers() {
        let mut payload = json!({});
        let t = Tensor::from_vec(vec![3], &[0u8, 7, 255]).unwrap();
        json_codec().encode(&mut payload, &t).unwrap();
        assert_eq!(payload, json!({"output": [0, 7, 255]}));
        let t = Tensor::zeros(DType::F32, vec![2, 0]).unwrap();
        json_codec().encode(&mut payload, &t).unwrap();
        assert_eq!(payload, json!({"output": [[], []]}));
    }
}
