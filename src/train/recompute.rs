//! Gradient checkpointing by segment recomputation (`train.gradient_checkpointing`).
//!
//! libtorch's autograd keeps every intermediate activation of the forward pass until the
//! backward pass has used it; at SDXL's 1024 px that is most of the memory of a training
//! step. tch has neither `torch.utils.checkpoint` nor custom autograd functions, so this does
//! by hand what they do:
//!
//! 1. the UNet's chain of segments ([`crate::sdxl::unet_segments`]) runs once without
//!    gradients, keeping only each segment's input and the stack entries (skips, residuals);
//! 2. the tail and the loss run with gradients from the last segment's output;
//! 3. the segments run again one at a time, last first, each from its saved input made a
//!    leaf that collects a gradient, and `(output * gradient of the output).sum()` is
//!    differentiated: its gradient with respect to the output is exactly that gradient, so the
//!    adapters' gradients accumulate as in one whole backward pass, and the input's gradient
//!    seeds the segment before.
//!
//! The UNet is not a plain chain: a state pushed onto the stack (a skip connection or a
//! transformer's residual) is read again later, so its gradient is the sum of what flows back
//! from the next segment and from the segment that popped it. The gradients equal those of the
//! plain backward pass up to the order of floating-point additions. Segments before the first
//! adapter need no gradient at all and are not recomputed.

use tch::Tensor;

use crate::sdxl::unet::UNet2DConditionModel;
use crate::sdxl::unet_segments::{upsample_size, Op};

/// The UNet's inputs, as [`UNet2DConditionModel::forward`] takes them.
#[derive(Debug)]
pub struct UNetInputs<'a> {
    pub sample: &'a Tensor,
    pub timesteps: &'a Tensor,
    pub encoder_hidden_states: &'a Tensor,
    pub text_embeds: &'a Tensor,
    pub time_ids: &'a Tensor,
}

/// A tensor of the forward pass kept for the backward pass, and whether it depends on a
/// trained tensor (only then does any gradient need to flow through it).
#[derive(Debug)]
struct Kept {
    tensor: Tensor,
    needs_grad: bool,
}

/// What one segment read and wrote in the forward pass.
#[derive(Debug)]
struct Record {
    input: usize,
    popped: Option<usize>,
    /// Index (in `kept`) of this segment's input pushed onto the stack.
    pushed_input: Option<usize>,
    /// Index of this segment's output pushed onto the stack.
    pushed_output: Option<usize>,
    upsample_size: Option<[i64; 2]>,
    output_needs_grad: bool,
}

fn add(a: Option<Tensor>, b: Option<Tensor>) -> Option<Tensor> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

/// A fresh leaf with the kept tensor's values.
fn leaf(k: &Kept) -> Tensor {
    k.tensor.detach().set_requires_grad(k.needs_grad)
}

/// The loss `loss_fn(UNet prediction)` with the adapters' gradients accumulated, computed
/// with one segment's activations alive at a time. Returns the loss, detached.
pub fn loss_backward(
    unet: &UNet2DConditionModel,
    x: &UNetInputs,
    loss_fn: impl FnOnce(&Tensor) -> Tensor,
) -> Tensor {
    let plan = unet.segments();
    // Forward: no adapter before the first transformer block, so the head never needs a
    // gradient; every segment's output is kept (it is the next one's input).
    let (h0, cond) = tch::no_grad(|| {
        unet.head(
            x.sample,
            x.timesteps,
            x.encoder_hidden_states,
            x.text_embeds,
            x.time_ids,
        )
    });
    let mut kept = vec![Kept {
        tensor: h0,
        needs_grad: false,
    }];
    let mut stack = vec![0usize];
    let mut records = Vec::with_capacity(plan.len());
    let mut h = 0usize;
    tch::no_grad(|| {
        for seg in &plan {
            let popped = if seg.op.pops() { stack.pop() } else { None };
            let pushed_input = seg.op.pushes_input().then(|| {
                stack.push(h);
                h
            });
            let size = match seg.op {
                Op::Upsample(_) => upsample_size(&cond, stack.last().map(|&i| &kept[i].tensor)),
                _ => None,
            };
            let out = seg.op.forward(
                &kept[h].tensor,
                popped.map(|i| &kept[i].tensor),
                size,
                &cond,
            );
            let needs_grad = seg.op.trainable()
                || kept[h].needs_grad
                || popped.is_some_and(|i| kept[i].needs_grad);
            kept.push(Kept {
                tensor: out,
                needs_grad,
            });
            let out = kept.len() - 1;
            if seg.push_output {
                stack.push(out);
            }
            records.push(Record {
                input: h,
                popped,
                pushed_input,
                pushed_output: seg.push_output.then_some(out),
                upsample_size: size,
                output_needs_grad: needs_grad,
            });
            h = out;
        }
    });

    // The tail and the loss, with gradients from the last segment's output.
    let last = leaf(&kept[h]);
    let loss = loss_fn(&unet.tail(&last));
    loss.backward();
    let mut grad_out = kept[h].needs_grad.then(|| last.grad());
    drop(last);

    // Backward, segment by segment. `grads[i]`: gradient collected so far for `kept[i]` from
    // the segments that popped it.
    let mut grads: Vec<Option<Tensor>> = (0..kept.len()).map(|_| None).collect();
    for (seg, rec) in plan.iter().zip(&records).rev() {
        let mut g = grad_out.take();
        if let Some(i) = rec.pushed_output {
            g = add(g, grads[i].take());
        }
        // The segments before the first adapter: nothing they touch needs a gradient.
        let Some(g) = g.filter(|_| rec.output_needs_grad) else {
            continue;
        };
        let input = leaf(&kept[rec.input]);
        let popped = rec.popped.map(|i| leaf(&kept[i]));
        let out = seg
            .op
            .forward(&input, popped.as_ref(), rec.upsample_size, &cond);
        (out * g).sum(None::<tch::Kind>).backward();
        if kept[rec.input].needs_grad {
            grad_out = Some(input.grad());
        }
        if let Some(i) = rec.pushed_input {
            grad_out = add(grad_out, grads[i].take());
        }
        if let (Some(i), Some(p)) = (rec.popped, &popped) {
            if kept[i].needs_grad {
                grads[i] = add(grads[i].take(), Some(p.grad()));
            }
        }
    }
    loss.detach()
}
