//! A model's parameters under their diffusers keys: the state dict that
//! `save_pretrained` writes. The [`Loader`](crate::load::Loader) records the
//! key, stored shape and layout of every parameter it hands out
//! ([`ParamKeys`]); walking the module's parameters by id and undoing the
//! layout (Linear weights are held transposed) gives back exactly the tensors
//! a diffusers file holds, so a model trained or modified here loads in Python
//! diffusers unchanged.

use crate::error::{ModelError, Result};
use crate::load::{ParamInfo, ParamKeys};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use diffusion_hub::save::OwnedTensor;
use std::collections::BTreeMap;

/// Every parameter of `module` as an f32 tensor under its diffusers key, in
/// PyTorch layout. A parameter `keys` does not know (a module not built by the
/// loader `keys` came from) is an error naming its shape.
pub fn state_dict<B: Backend, M: Module<B>>(
    module: &M,
    keys: &ParamKeys,
) -> Result<BTreeMap<String, OwnedTensor>> {
    state_dict_where(module, keys, |_| true)
}

/// Like [`state_dict`], for the parameters `keep` selects only (the others
/// are not read from the device): a LoRA's factors out of a whole UNet.
pub fn state_dict_where<B: Backend, M: Module<B>>(
    module: &M,
    keys: &ParamKeys,
    keep: impl Fn(&ParamInfo) -> bool,
) -> Result<BTreeMap<String, OwnedTensor>> {
    let mut visitor = Collect {
        keys,
        keep: &keep,
        out: BTreeMap::new(),
        error: None,
    };
    module.visit(&mut visitor);
    match visitor.error {
        Some(e) => Err(e),
        None => Ok(visitor.out),
    }
}

/// A parameter's values (row-major, as the module holds them) in the
/// file's layout: Linear weights held `[in, out]` become `[out, in, ...]`.
pub fn to_stored(info: &ParamInfo, values: Vec<f32>) -> Vec<f32> {
    if !info.transposed {
        return values;
    }
    let out = info.stored[0];
    transpose(&values, values.len() / out.max(1), out)
}

/// The inverse of [`to_stored`]: stored values in the module's layout.
pub fn from_stored(info: &ParamInfo, values: Vec<f32>) -> Vec<f32> {
    if !info.transposed {
        return values;
    }
    let out = info.stored[0];
    transpose(&values, out, values.len() / out.max(1))
}

/// The `cols × rows` transpose of a row-major `rows × cols` matrix.
pub(crate) fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = values[r * cols + c];
        }
    }
    t
}

struct Collect<'a> {
    keys: &'a ParamKeys,
    keep: &'a dyn Fn(&ParamInfo) -> bool,
    out: BTreeMap<String, OwnedTensor>,
    error: Option<ModelError>,
}

impl<B: Backend> ModuleVisitor<B> for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.error.is_some() {
            return;
        }
        let Some(info) = self.keys.get(&param.id) else {
            let dims = param.val().dims();
            self.error = Some(ModelError::input(
                "state_dict",
                format!("a parameter of shape {dims:?} was not built by this model's loader"),
            ));
            return;
        };
        if !(self.keep)(info) {
            return;
        }
        let tensor = param.val();
        let values: Vec<f32> = match tensor.into_data().convert_dtype(DType::F32).into_vec() {
            Ok(v) => v,
            Err(e) => {
                self.error = Some(ModelError::input(&info.key, format!("{e:?}")));
                return;
            }
        };
        let values = to_stored(info, values);
        self.out.insert(
            info.key.clone(),
            OwnedTensor::f32(info.stored.clone(), &values),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu as B;
    use crate::load::{Loader, Precision, StoredTensor, TensorMap};
    use crate::nn::Linear;
    use diffusion_hub::weights::Dtype;

    #[test]
    fn a_loaded_module_writes_back_the_bytes_it_was_read_from() {
        let mut weights = TensorMap {
            name: "m.safetensors".into(),
            ..Default::default()
        };
        let w: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        weights.insert_f32("proj.weight", vec![3, 2, 1, 1], &w);
        weights.insert_f32("proj.bias", vec![3], &[0.1, 0.2, 0.3]);
        let dev = Default::default();
        let loader = Loader::<B>::new(&weights, &dev, Precision::F32);
        let linear = Linear::load_maybe_conv(&loader.pp("proj"), 2, 3, true).unwrap();
        loader.clone().finish(&[]).unwrap();
        let saved = state_dict(&linear, &loader.param_keys()).unwrap();
        assert_eq!(saved.len(), 2);
        for (key, t) in &weights.tensors {
            let StoredTensor { shape, bytes, .. } = t;
            assert_eq!(&saved[key].shape, shape, "{key}");
            assert_eq!(&saved[key].data, bytes, "{key}");
            assert_eq!(saved[key].dtype, Dtype::F32);
        }
        // A module from another loader is refused, not silently misnamed.
        let other = Loader::<B>::random(&dev, Precision::F32);
        let foreign = Linear::load(&other, 2, 3, false).unwrap();
        let err = state_dict(&foreign, &loader.param_keys()).unwrap_err();
        assert!(err.to_string().contains("[2, 3]"), "{err}");
    }
}
