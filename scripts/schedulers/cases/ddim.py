from cases._matrix import SD, COSINE, LINEAR, trained_betas, case

C = "DDIMScheduler"
CASES = [
    case(C, "default", {}),
    case(C, "sd", SD),
    case(C, "cosine", COSINE),
    case(C, "trained_betas", {"trained_betas": trained_betas()}),
    case(C, "v_prediction", {**SD, "prediction_type": "v_prediction"}),
    case(C, "sample_pred", {"prediction_type": "sample"}),
    case(C, "linspace", {**SD, "timestep_spacing": "linspace"}, steps=13),
    case(C, "leading_offset", {**SD, "timestep_spacing": "leading", "steps_offset": 1}, steps=25),
    case(C, "trailing", {**SD, "timestep_spacing": "trailing"}, steps=7),
    case(C, "no_clip", {"clip_sample": False}),
    case(C, "clip_range", {"clip_sample": True, "clip_sample_range": 0.5}),
    case(C, "thresholding", {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9}),
    case(C, "zero_snr_trailing_v", {**SD, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}),
    case(C, "no_alpha_to_one", {"set_alpha_to_one": False, "beta_start": 0.01}),
    case(C, "eta_half", SD, step_kwargs={"eta": 0.5}),
    case(C, "eta_one_clipped", {}, step_kwargs={"eta": 1.0, "use_clipped_model_output": True}),
    case(C, "train_500", {**LINEAR, "num_train_timesteps": 500}, steps=50),
    case(C, "from_euler_config", SD, source_class="EulerDiscreteScheduler"),
]
