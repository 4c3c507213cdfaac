from cases._matrix import SD, COSINE, LINEAR, trained_betas, case

C = "EulerDiscreteScheduler"
PUB = {**LINEAR, "num_train_timesteps": 1100}
CASES = [
    case(C, "default", {}),
    case(C, "published_1100", PUB),
    case(C, "sd", SD),
    # Cosine betas put sigma(999) at ~2e4, where diffusers' own f32 result is off by ~5e-5: start lower.
    case(C, "cosine_leading", {**COSINE, "timestep_spacing": "leading", "steps_offset": 1}),
    case(C, "trained_betas", {"trained_betas": trained_betas()}),
    case(C, "v_prediction", {**SD, "prediction_type": "v_prediction"}),
    case(C, "sample_pred", {**SD, "prediction_type": "sample", "timestep_spacing": "trailing"}),
    case(C, "linspace_13", SD, steps=13),
    case(C, "leading_offset_25", {**SD, "timestep_spacing": "leading", "steps_offset": 1}, steps=25),
    case(C, "trailing_7", {**SD, "timestep_spacing": "trailing"}, steps=7),
    case(C, "steps_1", SD, steps=1),
    case(C, "steps_2_leading", {**SD, "timestep_spacing": "leading"}, steps=2),
    case(C, "steps_3_trailing", {**SD, "timestep_spacing": "trailing"}, steps=3),
    case(C, "karras", {**SD, "use_karras_sigmas": True}),
    case(C, "karras_trailing_7", {**SD, "use_karras_sigmas": True, "timestep_spacing": "trailing"}, steps=7),
    case(C, "karras_sigma_range", {**SD, "use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0}),
    case(C, "exponential", {**SD, "use_exponential_sigmas": True}, steps=12),
    case(C, "exponential_leading", {**LINEAR, "use_exponential_sigmas": True, "timestep_spacing": "leading", "steps_offset": 1}),
    case(C, "beta", {**SD, "use_beta_sigmas": True}),
    case(C, "beta_sigma_range", {**SD, "use_beta_sigmas": True, "sigma_min": 0.05, "sigma_max": 12.0}, steps=9),
    case(C, "log_linear", {**SD, "interpolation_type": "log_linear"}),
    case(C, "log_linear_karras", {**SD, "interpolation_type": "log_linear", "use_karras_sigmas": True}, steps=8),
    case(C, "continuous_v", {**SD, "timestep_type": "continuous", "prediction_type": "v_prediction"}),
    case(C, "continuous_v_karras", {**SD, "timestep_type": "continuous", "prediction_type": "v_prediction", "use_karras_sigmas": True}, steps=11),
    case(C, "continuous_eps", {**SD, "timestep_type": "continuous"}),
    case(C, "final_sigma_min", {**SD, "final_sigmas_type": "sigma_min"}),
    case(C, "final_sigma_min_karras", {**SD, "final_sigmas_type": "sigma_min", "use_karras_sigmas": True}),
    # Zero-SNR puts sigma(999) at 4096: a first step from there cancels ~12 bits and diffusers'
    # own f32 result is ~1.2e-5 off the exact one, so the trailing-like schedule starts at 979.
    case(C, "zero_snr_leading_v", {**SD, "rescale_betas_zero_snr": True, "timestep_spacing": "leading", "steps_offset": 1, "prediction_type": "v_prediction"}),
    case(C, "zero_snr_v_custom_timesteps", {**SD, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
         set_timesteps={"timesteps": [979, 899, 799, 699, 599, 499, 399, 299, 199, 99]}),
    case(C, "zero_snr_leading_eps", {**SD, "rescale_betas_zero_snr": True, "timestep_spacing": "leading"}),
    case(C, "custom_timesteps", SD, set_timesteps={"timesteps": [999, 850, 700, 500, 333, 200, 80, 10]}),
    case(C, "custom_timesteps_leading", {**SD, "timestep_spacing": "leading"}, set_timesteps={"timesteps": [901.5, 600, 301.25, 0]}),
    case(C, "custom_sigmas", SD, set_timesteps={"sigmas": [14.6, 9.0, 5.0, 2.5, 1.0, 0.5, 0.1, 0.0]}),
    case(C, "custom_sigmas_continuous_v", {**SD, "timestep_type": "continuous", "prediction_type": "v_prediction"},
         set_timesteps={"sigmas": [12.0, 6.0, 3.0, 1.2, 0.4, 0.05, 0.0]}),
    case(C, "churn", SD, step_kwargs={"s_churn": 1.0}),
    case(C, "churn_window", SD, steps=12, step_kwargs={"s_churn": 40.0, "s_tmin": 0.5, "s_tmax": 5.0, "s_noise": 1.003}),
    case(C, "train_500", {**LINEAR, "num_train_timesteps": 500}, steps=25),
    # Fields left at their defaults are dropped by diffusers' from_config (`_use_default_values`),
    # so the source config names the shared fields explicitly.
    case(C, "from_ddim_config", {**SD, "timestep_spacing": "leading", "steps_offset": 1}, source_class="DDIMScheduler"),
    case(C, "from_euler_a_config", {**SD, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
         source_class="EulerAncestralDiscreteScheduler"),
]
