from cases._matrix import SD, COSINE, LINEAR, trained_betas, case

C = "DPMSolverMultistepScheduler"

CASES = []

# Solver matrix: algorithm x order x solver_type (order 1 has no solver_type variants).
# `final_sigmas_type="zero"` is only accepted for the data-prediction (`++`) algorithms;
# `sde-dpmsolver` has no third-order update in diffusers (it fails once the third-order
# step is reached), so its order-3 case uses 4 steps, where only orders 1-2 run.
for algo in ["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"]:
    short = algo.replace("dpmsolver", "dpm").replace("++", "pp").replace("-", "_")
    final = "zero" if algo.endswith("++") else "sigma_min"
    for order in [1, 2, 3]:
        for solver_type in (["midpoint"] if order == 1 else ["midpoint", "heun"]):
            cfg = {**SD, "algorithm_type": algo, "solver_order": order, "solver_type": solver_type,
                   "final_sigmas_type": final}
            steps = 9
            if algo == "sde-dpmsolver" and order == 3:
                steps = 4
            CASES.append(case(C, f"{short}_o{order}_{solver_type}", cfg, steps=steps))
    # The other final sigma for the ++ variants, without lower_order_final.
    if algo.endswith("++"):
        CASES.append(case(C, f"{short}_o3_sigma_min_no_lof",
                          {**SD, "algorithm_type": algo, "solver_order": 3, "final_sigmas_type": "sigma_min",
                           "lower_order_final": False}, steps=8))

CASES += [
    case(C, "default", {}),
    case(C, "linear_published_config", {**LINEAR, "lower_order_final": False, "final_sigmas_type": "sigma_min"}),
    # x0 at t = 999 of the cosine schedule (alpha ~ 5e-5) cancels ~3 digits, so the
    # trace model's float32 rounding alone exceeds the tolerance there: start below it.
    case(C, "cosine_leading", {**COSINE, "timestep_spacing": "leading"}, steps=8),
    case(C, "cosine_lambda_clipped", {**COSINE, "lambda_min_clipped": -5.1}, steps=8),
    case(C, "cosine_lambda_clipped_leading", {**COSINE, "lambda_min_clipped": -5.1, "timestep_spacing": "leading"}, steps=7),
    case(C, "trained_betas", {"trained_betas": trained_betas(), "solver_order": 3}),
    case(C, "v_prediction", {**SD, "prediction_type": "v_prediction"}),
    case(C, "sample_pred_o3", {"prediction_type": "sample", "solver_order": 3}),
    case(C, "dpm_sample_pred_heun", {**SD, "prediction_type": "sample", "algorithm_type": "dpmsolver",
                                     "solver_type": "heun", "final_sigmas_type": "sigma_min"}),
    case(C, "dpm_v_pred_o3", {**SD, "prediction_type": "v_prediction", "algorithm_type": "dpmsolver",
                              "solver_order": 3, "final_sigmas_type": "sigma_min"}),
    case(C, "leading_offset", {**SD, "timestep_spacing": "leading", "steps_offset": 1}, steps=12),
    case(C, "trailing", {**SD, "timestep_spacing": "trailing"}, steps=7),
    case(C, "zero_snr_trailing_v", {**SD, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                                    "prediction_type": "v_prediction"}, steps=8),
    case(C, "zero_snr_sde_linspace_v", {**SD, "rescale_betas_zero_snr": True, "prediction_type": "v_prediction",
                                        "algorithm_type": "sde-dpmsolver++"}, steps=8),
    case(C, "thresholding", {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9}),
    case(C, "thresholding_small_max", {"thresholding": True, "sample_max_value": 0.5, "dynamic_thresholding_ratio": 0.87,
                                       "final_sigmas_type": "sigma_min", "lower_order_final": False}),
    case(C, "dpm_thresholding_o3", {"thresholding": True, "sample_max_value": 2.0, "algorithm_type": "dpmsolver",
                                    "solver_order": 3, "final_sigmas_type": "sigma_min"}),
    case(C, "euler_at_final_sigma_min", {**SD, "euler_at_final": True, "final_sigmas_type": "sigma_min",
                                         "lower_order_final": False}),
    case(C, "many_steps_lof", {**SD, "solver_order": 3, "final_sigmas_type": "sigma_min"}, steps=16),
    case(C, "many_steps_zero", {**SD, "solver_order": 3}, steps=15),
    case(C, "karras", {**SD, "use_karras_sigmas": True}),
    case(C, "karras_v_sigma_min", {**LINEAR, "use_karras_sigmas": True, "prediction_type": "v_prediction",
                                   "final_sigmas_type": "sigma_min", "lower_order_final": False}),
    case(C, "karras_sde_o3", {**SD, "use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    case(C, "exponential", {**SD, "use_exponential_sigmas": True}),
    case(C, "exponential_dpm", {**SD, "use_exponential_sigmas": True, "algorithm_type": "dpmsolver",
                                "final_sigmas_type": "sigma_min"}),
    case(C, "beta_sigmas", {**SD, "use_beta_sigmas": True, "solver_order": 3}),
    case(C, "beta_sigmas_sde", {**SD, "use_beta_sigmas": True, "algorithm_type": "sde-dpmsolver++"}),
    case(C, "lu_lambdas", {**SD, "use_lu_lambdas": True}),
    case(C, "lu_lambdas_v_sigma_min", {**LINEAR, "use_lu_lambdas": True, "prediction_type": "v_prediction",
                                       "final_sigmas_type": "sigma_min", "lower_order_final": False}),
    case(C, "lu_lambdas_cosine", {**COSINE, "use_lu_lambdas": True, "solver_order": 3}, steps=8),
    case(C, "flow_sigmas", {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0}),
    case(C, "flow_sigmas_sde_sigma_min", {"use_flow_sigmas": True, "prediction_type": "flow_prediction",
                                          "flow_shift": 1.0, "algorithm_type": "sde-dpmsolver++",
                                          "final_sigmas_type": "sigma_min"}),
    case(C, "flow_dynamic_mu", {"use_flow_sigmas": True, "prediction_type": "flow_prediction",
                                "use_dynamic_shifting": True, "solver_order": 3},
         set_timesteps={"num_inference_steps": 10, "mu": 0.5}),
    case(C, "learned_range", {**LINEAR, "variance_type": "learned_range"}),
    case(C, "learned_dpm", {**LINEAR, "variance_type": "learned", "algorithm_type": "dpmsolver",
                            "final_sigmas_type": "sigma_min"}),
    case(C, "one_step_leading", {**SD, "timestep_spacing": "leading"}, steps=1),
    case(C, "one_step_sde_leading", {**SD, "algorithm_type": "sde-dpmsolver++", "timestep_spacing": "leading"}, steps=1),
    case(C, "two_steps_o3", {**SD, "solver_order": 3}, steps=2),
    case(C, "three_steps_sde", {**SD, "algorithm_type": "sde-dpmsolver++", "solver_order": 3}, steps=3),
    case(C, "train_500", {**LINEAR, "num_train_timesteps": 500, "solver_order": 3}, steps=11),
    case(C, "custom_timesteps", SD, set_timesteps={"timesteps": [999, 850, 700, 520, 400, 260, 150, 60, 10]}),
    case(C, "custom_timesteps_sde_sigma_min", {**SD, "algorithm_type": "sde-dpmsolver++", "final_sigmas_type": "sigma_min"},
         set_timesteps={"timesteps": [901, 801, 650, 500, 301, 151, 21]}),
    # diffusers' from_config drops the keys the source class left at their defaults
    # (`_use_default_values`), so the cases set every key whose default differs.
    case(C, "from_ddim_config", {**SD, "timestep_spacing": "leading", "steps_offset": 1}, source_class="DDIMScheduler"),
    case(C, "from_ddim_config_trailing", {**SD, "timestep_spacing": "trailing"}, source_class="DDIMScheduler", steps=8),
]
