from cases._matrix import SD, COSINE, LINEAR, trained_betas, case

C = "EulerAncestralDiscreteScheduler"
CASES = [
    case(C, "default", {}),
    case(C, "published_1100", {**LINEAR, "num_train_timesteps": 1100}),
    case(C, "sd", SD),
    # Cosine betas put sigma(999) at ~2e4, where diffusers' own f32 result is ill-conditioned: start lower.
    case(C, "cosine_leading", {**COSINE, "timestep_spacing": "leading", "steps_offset": 1}),
    case(C, "trained_betas", {"trained_betas": trained_betas()}),
    case(C, "v_prediction", {**SD, "prediction_type": "v_prediction"}),
    case(C, "linspace_13", SD, steps=13),
    case(C, "leading_offset_25", {**SD, "timestep_spacing": "leading", "steps_offset": 1}, steps=25),
    case(C, "leading", {**LINEAR, "timestep_spacing": "leading"}),
    case(C, "trailing_7", {**SD, "timestep_spacing": "trailing"}, steps=7),
    case(C, "steps_1", SD, steps=1),
    case(C, "steps_2", {**SD, "timestep_spacing": "trailing"}, steps=2),
    case(C, "steps_3_leading", {**SD, "timestep_spacing": "leading"}, steps=3),
    case(C, "zero_snr_trailing_v", {**SD, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}),
    case(C, "zero_snr_linspace_eps", {**SD, "rescale_betas_zero_snr": True}),
    case(C, "train_500", {**LINEAR, "num_train_timesteps": 500}, steps=25),
    case(C, "from_euler_config", {**SD, "timestep_spacing": "leading", "steps_offset": 1, "use_karras_sigmas": True},
         source_class="EulerDiscreteScheduler"),
    # diffusers' from_config drops the source's default-valued fields (`_use_default_values`),
    # so the shared fields are named explicitly.
    case(C, "from_ddim_config", {**SD, "timestep_spacing": "leading", "steps_offset": 1}, source_class="DDIMScheduler"),
]
