//! candle operations backed by our deterministic kernels.
//!
//! candle builds the graph and runs backpropagation; these custom ops do
//! the arithmetic of the layers whose bits we promise: a fully connected
//! layer (optionally fused with ReLU) and softmax cross-entropy. Fusing
//! saves passes over memory, and owning the arithmetic is what lets a
//! training step give the same bits on every x86 CPU, not only on those
//! whose vector width matches.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Storage, Tensor, bail};

use crate::kernels::{MatRef, column_sums, matmul};

/// `y = x w + b`, optionally followed by ReLU. `x` is `[batch, in]`, `w`
/// is `[in, out]` (stored input-major so that the forward product reads it
/// row by row), `b` is `[out]`.
#[derive(Debug, Clone, Copy)]
pub struct Linear {
    pub relu: bool,
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        if self.relu { "crowdtrain-linear-relu" } else { "crowdtrain-linear" }
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
        b_storage: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, inputs) = x_layout.shape().dims2()?;
        let (w_inputs, outputs) = w_layout.shape().dims2()?;
        let bias_len = b_layout.shape().dims1()?;
        if w_inputs != inputs || bias_len != outputs {
            bail!("linear: input [{batch}, {inputs}], weight [{w_inputs}, {outputs}], bias [{bias_len}]");
        }
        let x = contiguous(x_storage, x_layout)?;
        let w = contiguous(w_storage, w_layout)?;
        let b = contiguous(b_storage, b_layout)?;
        let mut y = vec![0.0f32; batch * outputs];
        matmul(MatRef::row_major(x, batch, inputs), MatRef::row_major(w, inputs, outputs), &mut y);
        for row in y.chunks_exact_mut(outputs) {
            for (value, &bias) in row.iter_mut().zip(b) {
                let sum = *value + bias;
                // `sum < 0` keeps NaN as NaN, so a diverging run shows it.
                *value = if self.relu && sum < 0.0 { 0.0 } else { sum };
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((batch, outputs))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        grad_y: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (batch, inputs) = x.dims2()?;
        let outputs = w.dim(1)?;
        let mut grad_z = with_f32(grad_y, <[f32]>::to_vec)?;
        if self.relu {
            with_f32(y, |y| {
                for (grad, &output) in grad_z.iter_mut().zip(y) {
                    if output <= 0.0 {
                        *grad = 0.0;
                    }
                }
            })?;
        }
        let grad_z_view = MatRef::row_major(&grad_z, batch, outputs);
        let mut grad_w = vec![0.0f32; inputs * outputs];
        with_f32(x, |x| matmul(MatRef::row_major(x, batch, inputs).t(), grad_z_view, &mut grad_w))?;
        let mut grad_b = vec![0.0f32; outputs];
        column_sums(&grad_z, batch, outputs, &mut grad_b);
        // The input's gradient is only needed below the first layer.
        let grad_x = if x.track_op() {
            let mut grad_x = vec![0.0f32; batch * inputs];
            with_f32(w, |w| matmul(grad_z_view, MatRef::row_major(w, inputs, outputs).t(), &mut grad_x))?;
            Some(Tensor::from_vec(grad_x, (batch, inputs), x.device())?)
        } else {
            None
        };
        Ok((
            grad_x,
            Some(Tensor::from_vec(grad_w, (inputs, outputs), w.device())?),
            Some(Tensor::from_vec(grad_b, outputs, w.device())?),
        ))
    }
}

/// Mean softmax cross-entropy of `logits` `[n, classes]` against `targets`
/// `[n]` (u32 class indices), as a scalar.
#[derive(Debug, Clone, Copy)]
pub struct SoftmaxCrossEntropy;

impl CustomOp2 for SoftmaxCrossEntropy {
    fn name(&self) -> &'static str {
        "crowdtrain-softmax-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        logits_storage: &CpuStorage,
        logits_layout: &Layout,
        targets_storage: &CpuStorage,
        targets_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, classes) = logits_layout.shape().dims2()?;
        let logits = contiguous(logits_storage, logits_layout)?;
        let targets = contiguous_u32(targets_storage, targets_layout, rows, classes)?;
        let total: f64 = logits
            .chunks_exact(classes)
            .zip(targets)
            .map(|(row, &target)| f64::from(row_loss(row, target as usize)))
            .sum();
        let mean = if rows == 0 { 0.0 } else { (total / rows as f64) as f32 };
        Ok((CpuStorage::F32(vec![mean]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _loss: &Tensor,
        grad_loss: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, classes) = logits.dims2()?;
        let scale = grad_loss.to_scalar::<f32>()? / rows.max(1) as f32;
        let targets = targets.to_vec1::<u32>()?;
        let mut grad = with_f32(logits, <[f32]>::to_vec)?;
        for (row, &target) in grad.chunks_exact_mut(classes).zip(&targets) {
            let max = row_max(row);
            let mut denominator = 0.0f32;
            for value in row.iter_mut() {
                *value = libm::expf(*value - max);
                denominator += *value;
            }
            for (class, value) in row.iter_mut().enumerate() {
                let indicator = if class == target as usize { 1.0 } else { 0.0 };
                *value = flush_subnormal((*value / denominator - indicator) * scale);
            }
        }
        Ok((Some(Tensor::from_vec(grad, (rows, classes), logits.device())?), None))
    }
}

/// `value`, or zero if it is subnormal. A confident model gives the other
/// classes probabilities below f32's normal range; as gradients they change
/// nothing, but every multiplication with them in the backward pass is a
/// microcode assist on x86: 30 rounds of DiLoCo on the bundled subset took
/// 1.6 times as long. Flushed here, in code, rather than with the CPU's
/// flush-to-zero mode, which the portable kernels and emulated CPUs would
/// have to reproduce exactly.
fn flush_subnormal(value: f32) -> f32 {
    if value.abs() < f32::MIN_POSITIVE { 0.0 } else { value }
}

/// Cross-entropy of one row of logits: `log(sum(exp(row))) - row[target]`,
/// shifted by the row's maximum for range, with exp and log from the
/// pure-Rust `libm` so the platform's C library cannot change the bits.
pub fn row_loss(row: &[f32], target: usize) -> f32 {
    let max = row_max(row);
    let sum: f32 = row.iter().map(|&value| libm::expf(value - max)).sum();
    max + libm::logf(sum) - row[target]
}

/// The index of the largest logit (the first one on ties).
pub fn row_argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (index, &value) in row.iter().enumerate() {
        if value > row[best] {
            best = index;
        }
    }
    best
}

fn row_max(row: &[f32]) -> f32 {
    row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("crowdtrain ops need contiguous tensors, got {:?}", layout.stride()),
    }
}

fn contiguous_u32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    rows: usize,
    classes: usize,
) -> candle_core::Result<&'a [u32]> {
    let targets = storage.as_slice::<u32>()?;
    let targets = match layout.contiguous_offsets() {
        Some((start, end)) => &targets[start..end],
        None => bail!("targets must be contiguous"),
    };
    if targets.len() != rows {
        bail!("{} targets for {rows} rows of logits", targets.len());
    }
    if let Some(bad) = targets.iter().find(|&&target| target as usize >= classes) {
        bail!("target {bad} is not one of the {classes} classes");
    }
    Ok(targets)
}

/// Runs `f` on a tensor's values as one contiguous `f32` slice.
pub(crate) fn with_f32<R>(tensor: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let tensor = tensor.contiguous()?;
    let (storage, layout) = tensor.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => Ok(f(contiguous(cpu, layout)?)),
        _ => bail!("crowdtrain kernels run on the CPU"),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// Central differences against the analytic gradients of the fused
    /// layer stack, in f32 with a loose tolerance.
    #[test]
    fn gradients_match_finite_differences() {
        let device = Device::Cpu;
        let (batch, inputs, hidden, classes) = (3, 4, 5, 3);
        let wave = |len: usize, phase: f32| -> Vec<f32> {
            (0..len).map(|index| ((index as f32 + phase) * 0.7).sin() * 0.5).collect()
        };
        let x = Tensor::from_vec(wave(batch * inputs, 0.1), (batch, inputs), &device).unwrap();
        let targets = Tensor::from_vec(vec![0u32, 2, 1], batch, &device).unwrap();
        let params = [
            (wave(inputs * hidden, 1.0), vec![inputs, hidden]),
            (wave(hidden, 2.0), vec![hidden]),
            (wave(hidden * classes, 3.0), vec![hidden, classes]),
            (wave(classes, 4.0), vec![classes]),
        ];
        let loss_of = |values: &[Vec<f32>]| -> (Tensor, Vec<Var>) {
            let vars: Vec<Var> = values
                .iter()
                .zip(&params)
                .map(|(value, (_, shape))| Var::from_slice(value, shape.as_slice(), &device).unwrap())
                .collect();
            let h = x.apply_op3(vars[0].as_tensor(), vars[1].as_tensor(), Linear { relu: true }).unwrap();
            let logits =
                h.apply_op3(vars[2].as_tensor(), vars[3].as_tensor(), Linear { relu: false }).unwrap();
            (logits.apply_op2(&targets, SoftmaxCrossEntropy).unwrap(), vars)
        };
        let values: Vec<Vec<f32>> = params.iter().map(|(value, _)| value.clone()).collect();
        let (loss, vars) = loss_of(&values);
        let grads = loss.backward().unwrap();
        let epsilon = 1e-2f32;
        for (param, var) in vars.iter().enumerate() {
            let analytic = grads.get(var).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for index in 0..values[param].len() {
                let mut plus = values.clone();
                plus[param][index] += epsilon;
                let mut minus = values.clone();
                minus[param][index] -= epsilon;
                let numeric = (loss_of(&plus).0.to_scalar::<f32>().unwrap()
                    - loss_of(&minus).0.to_scalar::<f32>().unwrap())
                    / (2.0 * epsilon);
                assert!(
                    (numeric - analytic[index]).abs() < 2e-3,
                    "param {param}[{index}]: numeric {numeric}, analytic {}",
                    analytic[index]
                );
            }
        }
    }

    #[test]
    fn cross_entropy_rejects_out_of_range_targets() {
        let device = Device::Cpu;
        let logits = Tensor::zeros((2, 3), candle_core::DType::F32, &device).unwrap();
        let targets = Tensor::from_vec(vec![0u32, 3], 2, &device).unwrap();
        let error = logits.apply_op2(&targets, SoftmaxCrossEntropy).unwrap_err();
        assert!(error.to_string().contains("target 3"), "{error}");
    }

    #[test]
    fn a_confident_row_gives_zero_gradients_instead_of_subnormal_ones() {
        let device = Device::Cpu;
        // Gaps of 80 and 95 below the target's logit: probabilities of
        // e^-80 (normal) and e^-95 (subnormal, as the gradient would be).
        assert!(libm::expf(-80.0).is_normal() && libm::expf(-95.0).is_subnormal());
        let logits = Var::from_vec(vec![95.0f32, 15.0, 0.0], (1, 3), &device).unwrap();
        let targets = Tensor::from_vec(vec![0u32], 1, &device).unwrap();
        let loss = logits.as_tensor().apply_op2(&targets, SoftmaxCrossEntropy).unwrap();
        let grads = loss.backward().unwrap();
        let grad = grads.get(logits.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(grad[2], 0.0, "flushed: {grad:?}");
        assert!(grad[1] > 0.0 && grad[1].is_normal(), "kept: {grad:?}");
        assert!(grad.iter().all(|value| !value.is_subnormal()), "{grad:?}");
    }

    #[test]
    fn row_loss_is_log_of_class_count_for_equal_logits() {
        assert!((row_loss(&[0.5; 10], 3) - 10f32.ln()).abs() < 1e-6);
        assert_eq!(row_argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
    }
}
