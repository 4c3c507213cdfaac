import numpy as np

from cases._matrix import SD, COSINE, LINEAR, trained_betas, case

C = "UniPCMultistepScheduler"
SMIN = {"final_sigmas_type": "sigma_min"}
FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}


class Sigmas(list):
    """Custom sigmas as pipelines pass them (a numpy array): diffusers' flow branch does
    `flow_shift * sigmas`, which needs an array. A list subclass so the fixture JSON keeps it."""

    def __mul__(self, other):
        return np.asarray(self, dtype=np.float64) * other

    __rmul__ = __mul__


CASES = [
    case(C, "default", {}),
    case(C, "sd", SD),
    case(C, "cosine_v", {**COSINE, "prediction_type": "v_prediction"}),
    case(C, "trained_betas", {"trained_betas": trained_betas()}),
    case(C, "order1", {**SD, "solver_order": 1}, steps=8),
    case(C, "order3", {**SD, "solver_order": 3}, steps=9),
    case(C, "order3_sigma_min", {**SD, **SMIN, "solver_order": 3}, steps=8),
    case(C, "order4_sigma_min", {**SD, **SMIN, "solver_order": 4}, steps=12),
    case(C, "bh1_sigma_min", {**SD, **SMIN, "solver_type": "bh1"}),
    case(C, "bh1_order3_sigma_min", {**SD, **SMIN, "solver_type": "bh1", "solver_order": 3}, steps=9),
    case(C, "noise_pred_sigma_min", {**SD, **SMIN, "predict_x0": False}),
    case(C, "noise_pred_bh1_order3_v", {**SD, **SMIN, "predict_x0": False, "solver_type": "bh1", "solver_order": 3, "prediction_type": "v_prediction"}, steps=9),
    case(C, "noise_pred_sample", {**SMIN, "predict_x0": False, "prediction_type": "sample"}, steps=7),
    case(C, "no_lower_order_final_o3", {**SD, **SMIN, "lower_order_final": False, "solver_order": 3}, steps=10),
    case(C, "disable_corrector", {**SD, "disable_corrector": [0, 2, 5]}),
    case(C, "v_prediction", {**SD, "prediction_type": "v_prediction"}),
    case(C, "sample_pred", {"prediction_type": "sample", "solver_order": 3}, steps=9),
    case(C, "thresholding", {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9, "prediction_type": "sample"}),
    case(C, "thresholding_eps_o3", {**SD, "thresholding": True, "sample_max_value": 1.2, "solver_order": 3}, steps=9),
    case(C, "karras", {**SD, "use_karras_sigmas": True}),
    case(C, "karras_v_o3", {**SD, "use_karras_sigmas": True, "prediction_type": "v_prediction", "solver_order": 3}, steps=12),
    case(C, "karras_range", {**SD, **SMIN, "use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0}),
    case(C, "exponential", {**SD, "use_exponential_sigmas": True}, steps=8),
    case(C, "beta", {**SD, **SMIN, "use_beta_sigmas": True, "solver_order": 3}, steps=9),
    case(C, "flow", {**FLOW, "flow_shift": 3.0}),
    case(C, "flow_o3_sigma_min", {**FLOW, **SMIN, "flow_shift": 2.0, "solver_order": 3}, steps=9),
    case(C, "flow_dynamic_mu", {**FLOW, "use_dynamic_shifting": True}, set_timesteps={"num_inference_steps": 8, "mu": 0.7}),
    case(C, "flow_dynamic_linear", {**FLOW, "use_dynamic_shifting": True, "time_shift_type": "linear"}, set_timesteps={"num_inference_steps": 8, "mu": 1.5}),
    case(C, "flow_shift_terminal", {**FLOW, "flow_shift": 3.0, "shift_terminal": 0.1}, steps=9),
    case(C, "flow_karras", {**FLOW, "use_karras_sigmas": True}, steps=8),
    case(C, "flow_custom_sigmas", {**FLOW, "flow_shift": 2.0},
         set_timesteps={"sigmas": Sigmas([1.0, 0.9, 0.75, 0.6, 0.45, 0.3, 0.15])}),
    case(C, "linspace_default", {**SD, "timestep_spacing": "linspace"}, steps=11),
    case(C, "leading_offset", {**SD, "timestep_spacing": "leading", "steps_offset": 1}, steps=12),
    case(C, "trailing", {**SD, "timestep_spacing": "trailing"}, steps=7),
    case(C, "zero_snr_trailing_v", {**SD, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}),
    case(C, "steps_1_v", {**SD, "prediction_type": "v_prediction"}, steps=1),
    case(C, "steps_2", {**SD, "solver_order": 3}, steps=2),
    case(C, "steps_3", {**SD, "solver_order": 3}, steps=3),
    case(C, "steps_25", SD, steps=25),
    case(C, "train_500", {**LINEAR, "num_train_timesteps": 500}, steps=12),
    case(C, "legacy_midpoint", {**SD, "solver_type": "midpoint"}),
    # diffusers' from_config drops the keys the source class took by default
    # (`_use_default_values`); the Rust config has no such record, so the cases set
    # explicitly the keys whose defaults differ between the classes.
    case(C, "from_ddim_config", {**SD, "timestep_spacing": "trailing"}, source_class="DDIMScheduler"),
    case(C, "from_singlestep_config", {**SD, "solver_order": 3, "use_karras_sigmas": True, "lower_order_final": True},
         source_class="DPMSolverSinglestepScheduler", steps=9),
]
