from cases._matrix import SD, COSINE, LINEAR, trained_betas, case

C = "PNDMScheduler"
PLMS = {**SD, "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1}
CASES = [
    case(C, "default", {}),
    case(C, "sd_plms", PLMS),
    case(C, "sd_prk", SD),
    case(C, "cosine", COSINE),
    case(C, "cosine_plms", {**COSINE, "skip_prk_steps": True}, steps=7),
    case(C, "trained_betas", {"trained_betas": trained_betas()}),
    case(C, "v_prediction", {**SD, "prediction_type": "v_prediction"}),
    case(C, "v_prediction_plms", {**PLMS, "prediction_type": "v_prediction"}),
    case(C, "alpha_to_one", {"set_alpha_to_one": True, "beta_start": 0.001}),
    case(C, "no_alpha_to_one", {**SD, "set_alpha_to_one": False, "beta_start": 0.003}),
    case(C, "linspace_prk", {**SD, "timestep_spacing": "linspace"}, steps=13),
    case(C, "linspace_plms", {**SD, "timestep_spacing": "linspace", "skip_prk_steps": True}, steps=13),
    case(C, "leading_offset_prk", {**SD, "steps_offset": 1}, steps=25),
    case(C, "leading_offset_plms", PLMS, steps=25),
    case(C, "trailing_prk", {**SD, "timestep_spacing": "trailing"}, steps=7),
    case(C, "trailing_plms", {**SD, "timestep_spacing": "trailing", "skip_prk_steps": True}, steps=7),
    case(C, "prk_min_steps", {}, steps=4),
    case(C, "prk_5_steps", SD, steps=5),
    case(C, "plms_1_step", PLMS, steps=1),
    case(C, "plms_2_steps", PLMS, steps=2),
    case(C, "plms_3_steps", {**SD, "skip_prk_steps": True}, steps=3),
    case(C, "plms_linspace_2", {"timestep_spacing": "linspace", "skip_prk_steps": True}, steps=2),
    case(C, "train_500_prk", {**LINEAR, "num_train_timesteps": 500}, steps=50),
    case(C, "train_500_plms_trailing", {**LINEAR, "num_train_timesteps": 500, "skip_prk_steps": True, "timestep_spacing": "trailing"}, steps=30),
    case(C, "pow3_steps", {}, steps=27),
    case(C, "from_ddim_config", {**SD, "set_alpha_to_one": False}, source_class="DDIMScheduler"),
    case(C, "from_ddpm_config", {**SD, "timestep_spacing": "trailing"}, source_class="DDPMScheduler"),
]
