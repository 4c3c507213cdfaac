from cases._matrix import SD, COSINE, LINEAR, trained_betas, case

C = "KDPM2AncestralDiscreteScheduler"
CASES = [
    case(C, "default", {}),
    case(C, "sd", SD),
    case(C, "linear", LINEAR),
    # Cosine betas reach sigma ~2e4 at t = 999 (ill-conditioned first step in float32): start below it.
    case(C, "cosine_leading", {**COSINE, "timestep_spacing": "leading"}),
    case(C, "trained_betas", {"trained_betas": trained_betas()}),
    case(C, "v_prediction", {**SD, "prediction_type": "v_prediction"}),
    case(C, "leading_offset", {**SD, "timestep_spacing": "leading", "steps_offset": 1}, steps=25),
    case(C, "leading", {**LINEAR, "timestep_spacing": "leading"}, steps=7),
    case(C, "trailing", {**SD, "timestep_spacing": "trailing"}, steps=7),
    case(C, "trailing_3_v", {**SD, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}, steps=3),
    case(C, "karras", {**SD, "use_karras_sigmas": True}),
    case(C, "karras_v", {**SD, "use_karras_sigmas": True, "prediction_type": "v_prediction"}, steps=7),
    case(C, "karras_leading", {**LINEAR, "use_karras_sigmas": True, "timestep_spacing": "leading"}, steps=5),
    case(C, "exponential", {**SD, "use_exponential_sigmas": True}),
    case(C, "beta_sigmas", {**SD, "use_beta_sigmas": True}, steps=9),
    case(C, "one_step", SD, steps=1),
    # Two linspace steps jump from sigma 14.6 to 0.029: sigma_down = sqrt(s1^2 - up^2) then cancels
    # so badly that a 1-ulp change in the float32 beta table moves the result by ~1e-3 (also in
    # diffusers itself): it passes only because the Rust betas are bit-exact torch.linspace.
    case(C, "two_steps", SD, steps=2),
    case(C, "two_steps_trailing", {**SD, "timestep_spacing": "trailing"}, steps=2),
    case(C, "steps_25", LINEAR, steps=25),
    case(C, "train_500", {**LINEAR, "num_train_timesteps": 500}, steps=13),
    case(C, "seed_7", SD, seed=7, steps=6),
    # diffusers' from_config drops the source's *default* values (`_use_default_values`), so
    # every field that should carry over is passed explicitly.
    case(C, "from_ddim_config", {**SD, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}, source_class="DDIMScheduler", steps=6),
    case(C, "from_kdpm2_config", {**SD, "use_karras_sigmas": True, "timestep_spacing": "leading"}, source_class="KDPM2DiscreteScheduler", steps=8),
]
