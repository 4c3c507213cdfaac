from cases._matrix import SD, COSINE, LINEAR, trained_betas, case

C = "DEISMultistepScheduler"

CASES = []
for order in [1, 2, 3]:
    for lof in [True, False]:
        CASES.append(case(C, f"o{order}_lof_{str(lof).lower()}", {**SD, "solver_order": order, "lower_order_final": lof}))

CASES += [
    case(C, "default", {}),
    case(C, "linear_published", LINEAR),
    # t = 999 of the cosine schedule (alpha ~ 5e-5) cancels ~3 digits in the first
    # update: float32 rounding differences (division vs multiplication by the
    # reciprocal, the trace model's rounding) then exceed the tolerance, so the
    # cosine case starts below it.
    case(C, "cosine_leading", {**COSINE, "solver_order": 3, "timestep_spacing": "leading"}),
    case(C, "trained_betas", {"trained_betas": trained_betas(), "solver_order": 3}),
    case(C, "v_prediction", {**SD, "prediction_type": "v_prediction"}),
    case(C, "sample_pred_o3", {"prediction_type": "sample", "solver_order": 3}),
    case(C, "leading_offset", {**SD, "timestep_spacing": "leading", "steps_offset": 1}, steps=12),
    case(C, "trailing", {**SD, "timestep_spacing": "trailing", "solver_order": 3}, steps=7),
    case(C, "thresholding", {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9}),
    case(C, "thresholding_small_max_o3", {"thresholding": True, "sample_max_value": 0.5, "solver_order": 3}),
    case(C, "karras", {**SD, "use_karras_sigmas": True}),
    case(C, "karras_o3_no_lof", {**SD, "use_karras_sigmas": True, "solver_order": 3, "lower_order_final": False}),
    case(C, "exponential", {**SD, "use_exponential_sigmas": True, "solver_order": 3}),
    case(C, "beta_sigmas", {**SD, "use_beta_sigmas": True}),
    case(C, "beta_sigmas_sample_o3", {**SD, "use_beta_sigmas": True, "prediction_type": "sample", "solver_order": 3}),
    case(C, "beta_sigmas_v", {**SD, "use_beta_sigmas": True, "prediction_type": "v_prediction"}),
    case(C, "flow_sigmas", {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0}),
    case(C, "flow_dynamic_mu_o3", {"use_flow_sigmas": True, "prediction_type": "flow_prediction",
                                   "use_dynamic_shifting": True, "solver_order": 3},
         set_timesteps={"num_inference_steps": 10, "mu": 0.8}),
    case(C, "one_step_leading", {**SD, "timestep_spacing": "leading"}, steps=1),
    case(C, "two_steps_o3", {**SD, "solver_order": 3}, steps=2),
    case(C, "three_steps_o3", {**SD, "solver_order": 3}, steps=3),
    case(C, "many_steps_o3", {**SD, "solver_order": 3}, steps=25),
    case(C, "train_500", {**LINEAR, "num_train_timesteps": 500, "solver_order": 3}, steps=11),
    case(C, "from_dpm_config", {**SD, "solver_order": 3}, source_class="DPMSolverMultistepScheduler"),
    # diffusers' from_config drops the keys the source class left at their defaults
    # (`_use_default_values`), so the case sets every key whose default differs.
    case(C, "from_ddim_config", {**SD, "timestep_spacing": "trailing"}, source_class="DDIMScheduler", steps=8),
]
