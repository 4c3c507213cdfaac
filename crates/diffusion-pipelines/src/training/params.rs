//! A module's parameters as flat tensors by parameter id: the view the
//! optimizer, the gradient clipping and the moving average work on, whatever
//! the rank of each parameter. Ids survive `valid()`, `map` and updates, so one
//! id names the same weight in the training model, its gradients, the
//! optimizer state and the averaged copy.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use std::collections::{BTreeSet, HashMap};

/// One parameter, flattened.
#[derive(Debug, Clone)]
pub struct FlatParam<B: Backend> {
    /// Burn's id of the parameter.
    pub id: ParamId,
    /// Its shape in the module.
    pub dims: Vec<usize>,
    /// Its values, flattened (row-major).
    pub value: Tensor<B, 1>,
}

/// Every float parameter of `module`, in visiting order.
pub fn flatten<B: Backend, M: Module<B>>(module: &M) -> Vec<FlatParam<B>> {
    struct V<B: Backend>(Vec<FlatParam<B>>);
    impl<B: Backend> ModuleVisitor<B> for V<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let t = param.val();
            let dims = t.dims().to_vec();
            let n: usize = dims.iter().product();
            self.0.push(FlatParam {
                id: param.id,
                dims,
                value: t.reshape([n]),
            });
        }
    }
    let mut v = V(Vec::new());
    module.visit(&mut v);
    v.0
}

/// The gradient of every float parameter of `module` (flattened, on the
/// inner backend); `None` for a parameter the loss does not depend on.
pub fn gradients<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &B::Gradients,
) -> Vec<(ParamId, Option<Tensor<B::InnerBackend, 1>>)> {
    struct V<'a, B: AutodiffBackend> {
        grads: &'a B::Gradients,
        out: Vec<(ParamId, Option<Tensor<B::InnerBackend, 1>>)>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for V<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let g = param.val().grad(self.grads).map(|g| {
                let n: usize = g.dims().iter().product();
                g.reshape([n])
            });
            self.out.push((param.id, g));
        }
    }
    let mut v = V::<B> {
        grads,
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

/// `module` with the parameters named in `values` replaced (flat values,
/// reshaped to each parameter's shape); the others are kept.
pub fn replace<B: Backend, M: Module<B>>(module: M, values: &HashMap<ParamId, Tensor<B, 1>>) -> M {
    struct Map<'a, B: Backend>(&'a HashMap<ParamId, Tensor<B, 1>>);
    impl<B: Backend> ModuleMapper<B> for Map<'_, B> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            let tensor = match self.0.get(&id) {
                Some(v) => v.clone().reshape(tensor.dims()),
                None => tensor,
            };
            Param::from_mapped_value(id, tensor, mapper)
        }
    }
    module.map(&mut Map(values))
}

/// Like [`replace`] for a model on an autodiff backend, from inner-backend
/// values: the new parameters are fresh leaves that require gradients.
pub fn replace_autodiff<B: AutodiffBackend, M: Module<B>>(
    module: M,
    values: &HashMap<ParamId, Tensor<B::InnerBackend, 1>>,
) -> M {
    struct Map<'a, B: AutodiffBackend>(&'a HashMap<ParamId, Tensor<B::InnerBackend, 1>>);
    impl<B: AutodiffBackend> ModuleMapper<B> for Map<'_, B> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            let tensor = match self.0.get(&id) {
                Some(v) => Tensor::from_inner(v.clone().reshape(tensor.dims())).require_grad(),
                None => tensor,
            };
            Param::from_mapped_value(id, tensor, mapper)
        }
    }
    module.map(&mut Map(values))
}

/// `module` with every parameter outside `trainable` frozen (no gradient is
/// recorded for it): the base model under a LoRA, as `requires_grad_(False)`.
pub fn freeze_except<B: AutodiffBackend, M: Module<B>>(
    module: M,
    trainable: &BTreeSet<ParamId>,
) -> M {
    struct Freeze<'a>(&'a BTreeSet<ParamId>);
    impl<B: AutodiffBackend> ModuleMapper<B> for Freeze<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, tensor, mapper) = param.consume();
            let tensor = tensor.set_require_grad(self.0.contains(&id));
            Param::from_mapped_value(id, tensor, mapper)
        }
    }
    module.map(&mut Freeze(trainable))
}

/// The ids of the parameters that receive gradients.
pub fn trainable_ids<B: AutodiffBackend, M: Module<B>>(module: &M) -> BTreeSet<ParamId> {
    struct V(BTreeSet<ParamId>);
    impl<B: AutodiffBackend> ModuleVisitor<B> for V {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if param.val().is_require_grad() {
                self.0.insert(param.id);
            }
        }
    }
    let mut v = V(BTreeSet::new());
    module.visit(&mut v);
    v.0
}
