//! A small owned tensor: a dtype, a shape and little-endian bytes.
//!
//! This is the currency between the payload codecs, the batcher and the model, so none of
//! them needs libtorch. Bytes are kept little-endian, the wire order of the base64 codec
//! and of every platform libtorch runs on, so decoding base64 is a copy, not a conversion.

use std::fmt;
use std::str::FromStr;

/// An element type a [`Tensor`] can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// 32-bit IEEE float (`float32`).
    F32,
    /// 64-bit IEEE float (`float64`).
    F64,
    /// 64-bit signed integer (`int64`).
    I64,
    /// 32-bit signed integer (`int32`).
    I32,
    /// 8-bit unsigned integer (`uint8`).
    U8,
}

impl DType {
    /// Every dtype, in the order error messages list them.
    pub const ALL: [DType; 5] = [DType::F32, DType::F64, DType::I64, DType::I32, DType::U8];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::U8 => 1,
        }
    }

    /// The name used on the wire (NumPy's): `float32`, `float64`, `int64`, `int32`, `uint8`.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::U8 => "uint8",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A dtype name that is not one of [`DType::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dtype {0:?}: expected one of float32, float64, int64, int32, uint8")]
pub struct UnknownDType(pub String);

impl FromStr for DType {
    type Err = UnknownDType;

    /// Accepts the wire names and the short Rust-style ones (`f32`, `i64`, ...).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "float32" | "f32" => Ok(DType::F32),
            "float64" | "f64" => Ok(DType::F64),
            "int64" | "i64" => Ok(DType::I64),
            "int32" | "i32" => Ok(DType::I32),
            "uint8" | "u8" => Ok(DType::U8),
            other => Err(UnknownDType(other.to_owned())),
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A Rust type that is the element type of a [`DType`].
pub trait Element: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The dtype of this element type.
    const DTYPE: DType;
    /// Appends the little-endian bytes of `self`.
    fn put_le(self, out: &mut Vec<u8>);
    /// Reads one element from exactly `DTYPE.size()` little-endian bytes.
    fn get_le(bytes: &[u8]) -> Self;
}

macro_rules! element {
    ($t:ty, $d:expr, $n:literal) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = $d;
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get_le(bytes: &[u8]) -> Self {
                let mut a = [0u8; $n];
                a.copy_from_slice(bytes);
                <$t>::from_le_bytes(a)
            }
        }
    };
}

element!(f32, DType::F32, 4);
element!(f64, DType::F64, 8);
element!(i64, DType::I64, 8);
element!(i32, DType::I32, 4);
element!(u8, DType::U8, 1);

/// What went wrong building, stacking or reading tensors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// The data does not fill the shape exactly.
    #[error("shape {shape:?} of {dtype} needs {expected} bytes ({elements} elements), got {actual} bytes")]
    DataLength {
        /// The element type.
        dtype: DType,
        /// The shape asked for.
        shape: Vec<usize>,
        /// Elements the shape holds.
        elements: usize,
        /// Bytes the shape needs.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// The element count of the shape does not fit in memory.
    #[error("shape {shape:?} of {dtype} is too large")]
    TooLarge {
        /// The element type.
        dtype: DType,
        /// The shape asked for.
        shape: Vec<usize>,
    },
    /// `stack` of nothing: there is no shape to give the result.
    #[error("cannot stack an empty list of tensors")]
    EmptyStack,
    /// A tensor to stack differs from the first one.
    #[error(
        "cannot stack tensor {index}: expected {expected_dtype} {expected_shape:?} like tensor 0, got {dtype} {shape:?}"
    )]
    StackMismatch {
        /// Its position in the list.
        index: usize,
        /// The first tensor's dtype.
        expected_dtype: DType,
        /// The first tensor's shape.
        expected_shape: Vec<usize>,
        /// Its dtype.
        dtype: DType,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// `unstack` into a count that is not the leading dimension.
    #[error("cannot unstack shape {shape:?} into {parts} parts: expected leading dimension {parts}")]
    UnstackCount {
        /// The tensor's shape.
        shape: Vec<usize>,
        /// The number of parts asked for.
        parts: usize,
    },
    /// A typed read of a tensor of another dtype.
    #[error("expected a tensor of {expected}, got {actual}")]
    DType {
        /// The dtype asked for.
        expected: DType,
        /// The tensor's dtype.
        actual: DType,
    },
}

/// An owned, dense, row-major tensor stored as little-endian bytes.
///
/// The invariant `data.len() == product(shape) * dtype.size()` holds for every value: the
/// only ways in are the checked constructors.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl fmt::Debug for Tensor {
    // The bytes of a real input run to megabytes; dtype and shape are what a reader needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor({} {:?}, {} bytes)",
            self.dtype,
            self.shape,
            self.data.len()
        )
    }
}

/// Elements in `shape`, or `None` when the product overflows.
fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

impl Tensor {
    /// A tensor from little-endian bytes; fails unless they fill `shape` exactly.
    pub fn from_le_bytes(dtype: DType, shape: Vec<usize>, data: Vec<u8>) -> Result<Self, TensorError> {
        let Some((elements, expected)) =
            element_count(&shape).and_then(|n| Some((n, n.checked_mul(dtype.size())?)))
        else {
            return Err(TensorError::TooLarge { dtype, shape });
        };
        if data.len() != expected {
            return Err(TensorError::DataLength {
                dtype,
                shape,
                elements,
                expected,
                actual: data.len(),
            });
        }
        Ok(Tensor { dtype, shape, data })
    }

    /// A tensor from typed values; fails unless they fill `shape` exactly.
    pub fn from_vec<T: Element>(shape: Vec<usize>, values: &[T]) -> Result<Self, TensorError> {
        let mut data = Vec::with_capacity(values.len() * T::DTYPE.size());
        for &v in values {
            v.put_le(&mut data);
        }
        Self::from_le_bytes(T::DTYPE, shape, data)
    }

    /// A tensor of zeros.
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Result<Self, TensorError> {
        let bytes = element_count(&shape)
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| TensorError::TooLarge {
                dtype,
                shape: shape.clone(),
            })?;
        Self::from_le_bytes(dtype, shape, vec![0; bytes])
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dimensions, outermost first; `[]` for a scalar.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of elements (1 for a scalar).
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// Whether the tensor has no elements (some dimension is 0).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The little-endian bytes, row-major.
    pub fn as_le_bytes(&self) -> &[u8] {
        &self.data
    }

    /// Takes the little-endian bytes, row-major.
    pub fn into_le_bytes(self) -> Vec<u8> {
        self.data
    }

    /// The elements as `T`; fails unless `T` is the tensor's dtype.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, TensorError> {
        if T::DTYPE != self.dtype {
            return Err(TensorError::DType {
                expected: T::DTYPE,
                actual: self.dtype,
            });
        }
        Ok(self.data.chunks_exact(self.dtype.size()).map(T::get_le).collect())
    }

    /// The same elements under another shape with the same element count.
    pub fn reshape(self, shape: Vec<usize>) -> Result<Self, TensorError> {
        Self::from_le_bytes(self.dtype, shape, self.data)
    }
}

/// Stacks tensors of one dtype and shape `S` into one of shape `[n, S...]`.
pub fn stack(tensors: &[Tensor]) -> Result<Tensor, TensorError> {
    let first = tensors.first().ok_or(TensorError::EmptyStack)?;
    for (index, t) in tensors.iter().enumerate().skip(1) {
        if t.dtype != first.dtype || t.shape != first.shape {
            return Err(TensorError::StackMismatch {
                index,
                expected_dtype: first.dtype,
                expected_shape: first.shape.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
            });
        }
    }
    let mut shape = Vec::with_capacity(first.shape.len() + 1);
    shape.push(tensors.len());
    shape.extend_from_slice(&first.shape);
    let mut data = Vec::with_capacity(first.data.len() * tensors.len());
    for t in tensors {
        data.extend_from_slice(&t.data);
    }
    Tensor::from_le_bytes(first.dtype, shape, data)
}

/// Splits a tensor of shape `[parts, S...]` into `parts` tensors of shape `S`.
///
/// The leading dimension must be exactly `parts`: a model that answers a batch of `n` with
/// some other number of rows cannot be mapped back to its requests.
pub fn unstack(tensor: Tensor, parts: usize) -> Result<Vec<Tensor>, TensorError> {
    if tensor.shape.first() != Some(&parts) {
        return Err(TensorError::UnstackCount {
            shape: tensor.shape,
            parts,
        });
    }
    let inner = tensor.shape[1..].to_vec();
    if parts == 0 {
        return Ok(Vec::new());
    }
    let step = tensor.data.len() / parts;
    let mut out = Vec::with_capacity(parts);
    if step == 0 {
        // Rows with no elements: `chunks_exact(0)` would panic.
        for _ in 0..parts {
            out.push(Tensor::from_le_bytes(tensor.dtype, inner.clone(), Vec::new())?);
        }
        return Ok(out);
    }
    for chunk in tensor.data.chunks_exact(step) {
        out.push(Tensor::from_le_bytes(
            tensor.dtype,
            inner.clone(),
            chunk.to_vec(),
        )?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_round_trip_every_dtype() {
        let t = Tensor::from_vec(vec![2, 2], &[1.5f32, -2.0, 0.0, 3.25]).unwrap();
        assert_eq!(t.dtype(), DType::F32);
        assert_eq!(t.len(), 4);
        assert_eq!(t.as_le_bytes().len(), 16);
        assert_eq!(t.to_vec::<f32>().unwrap(), vec![1.5, -2.0, 0.0, 3.25]);
        assert_eq!(
            Tensor::from_vec(vec![2], &[1.0f64, 2.0])
                .unwrap()
                .to_vec::<f64>()
                .unwrap(),
            [1.0, 2.0]
        );
        assert_eq!(
            Tensor::from_vec(vec![1], &[i64::MIN])
                .unwrap()
                .to_vec::<i64>()
                .unwrap(),
            [i64::MIN]
        );
        assert_eq!(
            Tensor::from_vec(vec![], &[-7i32])
                .unwrap()
                .to_vec::<i32>()
                .unwrap(),
            [-7]
        );
        assert_eq!(
            Tensor::from_vec(vec![3], &[0u8, 128, 255]).unwrap().as_le_bytes(),
            &[0, 128, 255]
        );
    }

    #[test]
    fn bytes_are_little_endian() {
        let t = Tensor::from_vec(vec![1], &[1i32]).unwrap();
        assert_eq!(t.as_le_bytes(), &[1, 0, 0, 0]);
    }

    #[test]
    fn constructors_check_the_element_count() {
        let err = Tensor::from_vec(vec![2, 3], &[1.0f32; 5]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "shape [2, 3] of float32 needs 24 bytes (6 elements), got 20 bytes"
        );
        assert!(matches!(
            Tensor::from_le_bytes(DType::I64, vec![2], vec![0; 15]),
            Err(TensorError::DataLength {
                expected: 16,
                actual: 15,
                ..
            })
        ));
        assert!(matches!(
            Tensor::from_le_bytes(DType::F64, vec![usize::MAX, 2], vec![]),
            Err(TensorError::TooLarge { .. })
        ));
        // A zero dimension holds nothing, and a scalar holds one element.
        assert!(
            Tensor::from_le_bytes(DType::F32, vec![3, 0], vec![])
                .unwrap()
                .is_empty()
        );
        assert_eq!(Tensor::zeros(DType::U8, vec![]).unwrap().len(), 1);
    }

    #[test]
    fn typed_read_checks_the_dtype() {
        let t = Tensor::from_vec(vec![1], &[1.0f32]).unwrap();
        assert_eq!(
            t.to_vec::<i64>().unwrap_err().to_string(),
            "expected a tensor of int64, got float32"
        );
    }

    #[test]
    fn stack_then_unstack_round_trips() {
        let parts: Vec<Tensor> = (0..3)
            .map(|i| Tensor::from_vec(vec![2], &[i as f32, -(i as f32)]).unwrap())
            .collect();
        let stacked = stack(&parts).unwrap();
        assert_eq!(stacked.shape(), &[3, 2]);
        assert_eq!(
            stacked.to_vec::<f32>().unwrap(),
            vec![0.0, -0.0, 1.0, -1.0, 2.0, -2.0]
        );
        assert_eq!(unstack(stacked, 3).unwrap(), parts);
    }

    #[test]
    fn stack_of_scalars_and_of_empty_rows() {
        let scalars = [
            Tensor::from_vec(vec![], &[1u8]).unwrap(),
            Tensor::from_vec(vec![], &[2u8]).unwrap(),
        ];
        let s = stack(&scalars).unwrap();
        assert_eq!(s.shape(), &[2]);
        assert_eq!(unstack(s, 2).unwrap(), scalars);

        let empty = Tensor::zeros(DType::F32, vec![0]).unwrap();
        let s = stack(&[empty.clone(), empty.clone()]).unwrap();
        assert_eq!(s.shape(), &[2, 0]);
        assert_eq!(unstack(s, 2).unwrap(), vec![empty.clone(), empty]);
    }

    #[test]
    fn stack_rejects_nothing_and_mismatches() {
        assert_eq!(stack(&[]).unwrap_err(), TensorError::EmptyStack);
        let a = Tensor::zeros(DType::F32, vec![2]).unwrap();
        let b = Tensor::zeros(DType::F32, vec![3]).unwrap();
        let c = Tensor::zeros(DType::I64, vec![2]).unwrap();
        assert_eq!(
            stack(&[a.clone(), b]).unwrap_err().to_string(),
            "cannot stack tensor 1: expected float32 [2] like tensor 0, got float32 [3]"
        );
        assert!(matches!(
            stack(&[a, c]),
            Err(TensorError::StackMismatch {
                index: 1,
                dtype: DType::I64,
                ..
            })
        ));
    }

    #[test]
    fn unstack_needs_the_leading_dimension() {
        let t = Tensor::zeros(DType::F32, vec![4, 2]).unwrap();
        assert_eq!(
            unstack(t, 3).unwrap_err().to_string(),
            "cannot unstack shape [4, 2] into 3 parts: expected leading dimension 3"
        );
        let scalar = Tensor::zeros(DType::F32, vec![]).unwrap();
        assert!(matches!(
            unstack(scalar, 1),
            Err(TensorError::UnstackCount { parts: 1, .. })
        ));
        assert!(
            unstack(Tensor::zeros(DType::F32, vec![0, 5]).unwrap(), 0)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn dtype_names_parse_and_print() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
        }
        assert_eq!("f32".parse::<DType>().unwrap(), DType::F32);
        assert_eq!(
            "float16".parse::<DType>().unwrap_err().to_string(),
            "unknown dtype \"float16\": expected one of float32, float64, int64, int32, uint8"
        );
    }

    #[test]
    fn reshape_keeps_the_count() {
        let t = Tensor::zeros(DType::I32, vec![2, 3]).unwrap();
        assert_eq!(t.clone().reshape(vec![6]).unwrap().shape(), &[6]);
        assert!(t.reshape(vec![4]).is_err());
    }
}
