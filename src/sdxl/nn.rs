//! The layer primitives, loaded by checkpoint name (`<path>.weight`, `<path>.bias`).

use std::any::Any;
use std::fmt;

use tch::{Kind, Tensor};

use super::weights::{Init, Weights};
use crate::error::{Error, Result};

/// A learned update that sits beside a frozen linear layer. The model code knows only this
/// seam: the adapter layer above installs a delta (a low-rank adapter), and a `Linear` adds
/// its branch to the frozen output, or folds its weight in, as diffusers keeps LoRA out of
/// its model classes.
pub trait LinearDelta: fmt::Debug + Send + Any {
    /// The side branch for input `x`, in the delta's own dtype; the layer adds it to the
    /// frozen output.
    fn forward(&self, x: &Tensor) -> Tensor;
    /// The layer's output with the delta, given its frozen output `y = x W0^T + b` and its
    /// frozen weight and bias. Most deltas add their branch; one that rescales the frozen
    /// output (DoRA's magnitude) overrides this.
    fn output(&self, x: &Tensor, y: Tensor, _weight: &Tensor, _bias: Option<&Tensor>) -> Tensor {
        add_branch(y, &self.forward(x))
    }
    /// The same update as an (out x in) weight: what merging adds to the frozen weight `w0`
    /// (as loaded, not merged). Only a delta that [`reads_base`](Self::reads_base) looks at it.
    fn delta_weight(&self, w0: &Tensor) -> Tensor;
    /// Does the update depend on the frozen weight (DoRA's does)? Merging then keeps the
    /// weight as loaded, to return to it exactly.
    fn reads_base(&self) -> bool {
        false
    }
    /// For the installer, to reach its own type again.
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// A linear layer `y = x W^T + b`, with the module path it was loaded from (adapters find
/// their target by that name) and an optional delta beside the frozen weight.
#[derive(Debug)]
pub struct Linear {
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    delta: Option<Box<dyn LinearDelta>>,
    /// The delta is folded into `weight`: its branch is then skipped.
    merged: bool,
    /// The weight as loaded, kept while a delta that reads it is merged.
    unmerged: Option<Tensor>,
}

impl Linear {
    pub fn new(w: &Weights, in_dim: i64, out_dim: i64, bias: bool) -> Result<Self> {
        let weight = w.get("weight", &[out_dim, in_dim], Init::FanIn)?;
        let bias = if bias {
            Some(w.get("bias", &[out_dim], Init::FanIn)?)
        } else {
            None
        };
        Ok(Linear {
            name: w.path().to_string(),
            weight,
            bias,
            delta: None,
            merged: false,
            unmerged: None,
        })
    }

    pub fn in_dim(&self) -> i64 {
        self.weight.size()[1]
    }

    pub fn out_dim(&self) -> i64 {
        self.weight.size()[0]
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.linear(&self.weight, self.bias.as_ref());
        match self.active_delta() {
            Some(d) => d.output(x, y, &self.weight, self.bias.as_ref()),
            None => y,
        }
    }

    /// Install a delta beside the frozen weight (unmerging and replacing any earlier one), or
    /// remove it with `None`; returns the one it replaced. The weight is left as loaded.
    pub fn set_delta(
        &mut self,
        delta: Option<Box<dyn LinearDelta>>,
    ) -> Option<Box<dyn LinearDelta>> {
        self.unmerge();
        std::mem::replace(&mut self.delta, delta)
    }

    /// The installed delta, merged or not.
    pub fn delta(&self) -> Option<&dyn LinearDelta> {
        self.delta.as_deref()
    }

    pub fn delta_mut(&mut self) -> Option<&mut dyn LinearDelta> {
        self.delta.as_deref_mut()
    }

    /// The delta, unless there is none or it is merged into the weight.
    pub fn active_delta(&self) -> Option<&dyn LinearDelta> {
        self.delta().filter(|_| !self.merged)
    }

    /// Fold the delta into the frozen weight (`W0 + delta`): rendering then costs nothing
    /// extra. Exact up to the rounding of the weight's dtype.
    pub fn merge(&mut self) {
        let _guard = tch::no_grad_guard();
        if !self.merged {
            if let Some(delta) = self.weight_update() {
                if self.delta.as_ref().is_some_and(|d| d.reads_base()) {
                    let merged = &self.weight + &delta;
                    self.unmerged = Some(std::mem::replace(&mut self.weight, merged));
                } else {
                    let _ = self.weight.g_add_(&delta);
                }
                self.merged = true;
            }
        }
    }

    /// Undo `merge`.
    pub fn unmerge(&mut self) {
        let _guard = tch::no_grad_guard();
        if self.merged {
            if let Some(w0) = self.unmerged.take() {
                self.weight = w0;
            } else if let Some(delta) = self.weight_update() {
                let _ = self.weight.g_sub_(&delta);
            }
            self.merged = false;
        }
    }

    /// The delta's weight in the frozen weight's dtype and device, computed without gradients.
    fn weight_update(&self) -> Option<Tensor> {
        let _guard = tch::no_grad_guard();
        self.delta.as_ref().map(|d| {
            d.delta_weight(&self.weight)
                .to_kind(self.weight.kind())
                .to_device(self.weight.device())
        })
    }
}

/// The frozen output plus an adapter branch (f32), in the frozen output's dtype (no cast when
/// they already agree, as on the CPU in f32).
fn add_branch(y: Tensor, branch: &Tensor) -> Tensor {
    let kind = y.kind();
    let sum = y + branch;
    if sum.kind() == kind {
        sum
    } else {
        sum.to_kind(kind)
    }
}

/// A 2-D convolution (square kernel).
#[derive(Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: i64,
    pub padding: i64,
}

impl Conv2d {
    pub fn new(
        w: &Weights,
        in_ch: i64,
        out_ch: i64,
        kernel: i64,
        stride: i64,
        padding: i64,
    ) -> Result<Self> {
        let weight = w.get("weight", &[out_ch, in_ch, kernel, kernel], Init::FanIn)?;
        let bias = Some(w.get("bias", &[out_ch], Init::FanIn)?);
        Ok(Conv2d {
            weight,
            bias,
            stride,
            padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.weight,
            self.bias.as_ref(),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }
}

/// Group normalisation with affine parameters.
#[derive(Debug)]
pub struct GroupNorm {
    pub groups: i64,
    pub eps: f64,
    pub weight: Tensor,
    pub bias: Tensor,
}

impl GroupNorm {
    /// Refuses `channels` that do not split into `groups` equal groups (libtorch would only
    /// fail at the first forward pass, without naming the layer).
    pub fn new(w: &Weights, groups: i64, channels: i64, eps: f64) -> Result<Self> {
        if groups <= 0 || channels % groups != 0 {
            return Err(Error::msg(format!(
                "{}: group norm `{}` has {channels} channels, which do not split into {groups} \
                 groups",
                w.component(),
                w.path()
            )));
        }
        let weight = w.get("weight", &[channels], Init::Ones)?;
        let bias = w.get("bias", &[channels], Init::Zeros)?;
        Ok(GroupNorm {
            groups,
            eps,
            weight,
            bias,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.group_norm(
            self.groups,
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

/// Layer normalisation over the last dimension.
#[derive(Debug)]
pub struct LayerNorm {
    pub eps: f64,
    pub weight: Tensor,
    pub bias: Tensor,
    dim: i64,
}

impl LayerNorm {
    pub fn new(w: &Weights, dim: i64, eps: f64) -> Result<Self> {
        let weight = w.get("weight", &[dim], Init::Ones)?;
        let bias = w.get("bias", &[dim], Init::Zeros)?;
        Ok(LayerNorm {
            eps,
            weight,
            bias,
            dim,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.dim],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

/// A lookup table (token or position embeddings).
#[derive(Debug)]
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(w: &Weights, count: i64, dim: i64) -> Result<Self> {
        Ok(Embedding {
            weight: w.get("weight", &[count, dim], Init::Normal(0.02))?,
        })
    }

    pub fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.weight, &ids.to_kind(Kind::Int64), -1, false, false)
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use tch::{Device, Kind};

    use super::GroupNorm;
    use crate::sdxl::weights::{ShapeSource, Weights};

    #[test]
    fn group_norm_refuses_channels_that_do_not_split_into_its_groups() {
        let w = Weights::new(Rc::new(ShapeSource::new()), "vae", Kind::Float, Device::Cpu);
        let w = w.pp("encoder").pp("conv_norm_out");
        assert!(GroupNorm::new(&w, 32, 128, 1e-6).is_ok());
        let err = GroupNorm::new(&w, 32, 48, 1e-6).expect_err("48 channels, 32 groups");
        assert_eq!(
            err.to_string(),
            "vae: group norm `encoder.conv_norm_out` has 48 channels, which do not split into 32 \
             groups"
        );
        assert!(GroupNorm::new(&w, 0, 48, 1e-6).is_err());
    }
}
