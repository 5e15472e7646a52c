//! The TorchScript fixtures run under libtorch (tch) give Python's outputs, one input at a
//! time and batched, across input shapes. The fixtures and expected outputs are made by
//! `fixtures/make_fixtures.py` with Python torch 2.13.0.

#![cfg(feature = "torch")]

use std::path::{Path, PathBuf};

use serde_json::Value;
use troupe_gpu_worker::batcher::{Batcher, BatcherConfig};
use troupe_gpu_worker::tensor::Tensor;
use troupe_gpu_worker::torch_model::{Cuda, Device, DeviceChoice, TorchError, TorchModel};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// float32 through different kernels (one row vs a batch): a few ulps apart at most.
const TOLERANCE: f32 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

struct Case {
    input: Vec<f32>,
    shape: Vec<usize>,
    output: Vec<f32>,
}

/// Flattens a nested JSON array of numbers, returning its values and shape.
fn flatten(value: &Value) -> Result<(Vec<f32>, Vec<usize>), String> {
    match value {
        Value::Number(n) => Ok((vec![n.as_f64().ok_or("not a number")? as f32], vec![])),
        Value::Array(items) => {
            let mut values = Vec::new();
            let mut inner: Option<Vec<usize>> = None;
            for item in items {
                let (v, s) = flatten(item)?;
                if inner.as_ref().is_some_and(|i| *i != s) {
                    return Err("ragged array".into());
                }
                inner = Some(s);
                values.extend(v);
            }
            let mut shape = vec![items.len()];
            shape.extend(inner.unwrap_or_default());
            Ok((values, shape))
        }
        other => Err(format!("unexpected {other}")),
    }
}

fn cases(model: &str) -> Result<Vec<Case>, Box<dyn std::error::Error>> {
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(fixture("expected.json"))?)?;
    let list = expected[model].as_array().ok_or("no cases")?;
    list.iter()
        .map(|case| {
            let (input, shape) = flatten(&case["input"])?;
            let (output, _) = flatten(&case["output"])?;
            Ok(Case { input, shape, output })
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= TOLERANCE,
            "{what}[{i}]: got {g}, Python gave {w}"
        );
    }
}

fn load(name: &str) -> Result<TorchModel, TorchError> {
    TorchModel::load(&fixture(name), DeviceChoice::Auto, false)
}

#[test]
fn the_mlp_matches_python_one_input_at_a_time() -> TestResult {
    let model = load("mlp.pt")?;
    for (i, case) in cases("mlp")?.iter().enumerate() {
        let mut shape = vec![1];
        shape.extend(&case.shape);
        let (output, out_shape) = model.forward(&case.input, &shape)?;
        assert_eq!(out_shape, [1, 3]);
        assert_close(&output, &case.output, &format!("mlp case {i}"));
    }
    Ok(())
}

#[test]
fn the_mlp_matches_python_in_one_batch() -> TestResult {
    let model = load("mlp.pt")?;
    let cases = cases("mlp")?;
    let batch: Vec<f32> = cases.iter().flat_map(|c| c.input.clone()).collect();
    let (output, shape) = model.forward(&batch, &[cases.len(), 4])?;
    assert_eq!(shape, [cases.len(), 3]);
    for (i, (row, case)) in output.chunks(3).zip(&cases).enumerate() {
        assert_close(row, &case.output, &format!("mlp batch row {i}"));
    }
    Ok(())
}

#[test]
fn the_conv_net_matches_python_batched_by_shape() -> TestResult {
    let model = load("convnet.pt")?;
    let cases = cases("convnet")?;
    let mut shapes: Vec<Vec<usize>> = cases.iter().map(|c| c.shape.clone()).collect();
    shapes.dedup();
    shapes.sort();
    shapes.dedup();
    assert!(shapes.len() >= 3, "the fixtures mix input shapes");
    for shape in shapes {
        let group: Vec<&Case> = cases.iter().filter(|c| c.shape == shape).collect();
        let batch: Vec<f32> = group.iter().flat_map(|c| c.input.clone()).collect();
        let mut batch_shape = vec![group.len()];
        batch_shape.extend(&shape);
        let (output, out_shape) = model.forward(&batch, &batch_shape)?;
        assert_eq!(out_shape, [group.len(), 2]);
        for (row, case) in output.chunks(2).zip(&group) {
            assert_close(row, &case.output, &format!("convnet {shape:?}"));
        }
    }
    Ok(())
}

#[test]
fn a_wrongly_shaped_input_is_an_error_not_a_crash() -> TestResult {
    let model = load("mlp.pt")?;
    let error = model.forward(&[0.0; 5], &[1, 5]).err().map(|e| e.to_string());
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.starts_with("forward pass failed")),
        "{error:?}"
    );
    let error = model.forward(&[0.0; 3], &[1, 4]).err().map(|e| e.to_string());
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("cannot have shape [1, 4]")),
        "{error:?}"
    );
    // The model still works afterwards.
    model.forward(&[0.0; 4], &[1, 4])?;
    Ok(())
}

#[test]
fn auto_picks_the_cpu_without_cuda_and_warms_up() -> TestResult {
    let model = load("mlp.pt")?;
    if !Cuda::is_available() {
        assert_eq!(model.device(), Device::Cpu);
    }
    model.warm_up(&[8, 4], 3)?;
    Ok(())
}

#[test]
fn a_missing_model_names_its_path() {
    let error = TorchModel::load(Path::new("/nonexistent/model.pt"), DeviceChoice::Cpu, false)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("/nonexistent/model.pt"), "{error}");
}

#[test]
fn cuda_asked_for_without_a_gpu_is_refused_clearly() {
    if Cuda::is_available() {
        return;
    }
    let error = TorchModel::load(&fixture("mlp.pt"), DeviceChoice::Cuda(0), false)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("sees 0 CUDA device(s)"), "{error}");
}

/// The fixtures' inputs, all at once and in mixed shapes, through the dynamic batcher and
/// libtorch: every envelope gets Python's output for its own input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batcher_over_libtorch_gives_each_input_its_python_output() -> TestResult {
    let config = BatcherConfig {
        max_batch_size: 4,
        max_queue_delay: std::time::Duration::from_millis(20),
        ..BatcherConfig::default()
    };
    let batcher = Batcher::start(load("convnet.pt")?, config)?;
    let cases = cases("convnet")?;
    let handles: Vec<_> = cases
        .iter()
        .map(|case| {
            let batcher = batcher.clone();
            let input = Tensor::from_vec(case.shape.clone(), &case.input);
            tokio::spawn(async move {
                let input = input.map_err(|e| e.to_string())?;
                batcher.infer(input).await.map_err(|e| e.to_string())
            })
        })
        .collect();
    for (i, (handle, case)) in handles.into_iter().zip(&cases).enumerate() {
        let output = handle.await??;
        assert_eq!(output.shape(), [2]);
        assert_close(
            &output.to_vec::<f32>()?,
            &case.output,
            &format!("convnet case {i}"),
        );
    }
    Ok(())
}
