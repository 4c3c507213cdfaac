//! The command line, declared with clap's builder API (the derive macros are
//! not available offline). Flags carry diffusers' call-parameter names, with
//! dashes.

use clap::{Arg, ArgAction, Command, value_parser};

use crate::args;

/// The `diffuse` command and its subcommands.
pub fn command() -> Command {
    Command::new("diffuse")
        .about("Generate images with diffusion models (diffusers' pipelines, in Rust)")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(
            // Every generation flag is declared for all three commands (one
            // settings reader); those a command refuses are hidden from its help.
            generation(Command::new("generate"))
                .about("Text-to-image (unconditional for DDPM/DDIM models)")
                .mut_arg("strength", |a| a.hide(true))
                .mut_arg("image", |a| a.hide(true))
                .mut_arg("mask", |a| a.hide(true)),
        )
        .subcommand(
            generation(Command::new("img2img"))
                .about("Image-to-image: denoise a noised copy of --image")
                .mut_arg("image", |a| a.required(true))
                .mut_arg("mask", |a| a.hide(true))
                .mut_arg("latents", |a| a.hide(true)),
        )
        .subcommand(
            generation(Command::new("inpaint"))
                .about("Inpainting: repaint where --mask is white")
                .mut_arg("image", |a| a.required(true))
                .mut_arg("mask", |a| a.required(true)),
        )
        .subcommand(
            Command::new("convert")
                .about("Convert a single-file (A1111/ComfyUI) checkpoint to a diffusers folder")
                .arg(
                    Arg::new("checkpoint")
                        .value_name("CHECKPOINT")
                        .required(true)
                        .help("The .safetensors or .ckpt file"),
                )
                .arg(
                    Arg::new("out_dir")
                        .value_name("OUT_DIR")
                        .required(true)
                        .help("The diffusers folder to write (must not exist or be empty)"),
                )
                .arg(
                    Arg::new("prediction_type")
                        .long("prediction-type")
                        .value_name("TYPE")
                        .help(
                            "The scheduler's prediction_type (v_prediction for SD2 768-v models)",
                        ),
                )
                .arg(skip_unsafe_globals())
                .arg(
                    Arg::new("extract_ema")
                        .long("extract-ema")
                        .action(ArgAction::SetTrue)
                        .help("Take the UNet from the checkpoint's EMA weights (model_ema.*)"),
                )
                .arg(
                    Arg::new("set")
                        .long("set")
                        .value_name("COMPONENT.FIELD=VALUE")
                        .action(ArgAction::Append)
                        .value_parser(args::component_field_value)
                        .help(
                            "Set a config field the weights cannot tell, e.g. \
                             unet.upcast_attention=true or vae.scaling_factor=0.13025; \
                             VALUE is JSON or a bare string (repeatable)",
                        ),
                ),
        )
        .subcommand(train())
        .subcommand(fine_tune(false))
        .subcommand(fine_tune(true))
        .subcommand(
            Command::new("preprocess")
                .about("Make a control image: the Canny edge map of an image, as cv2.Canny")
                .arg(
                    Arg::new("method")
                        .value_name("METHOD")
                        .required(true)
                        .help("canny[:LOW,HIGH] (thresholds on the L1 gradient; default 100,200)"),
                )
                .arg(
                    Arg::new("input")
                        .value_name("IN")
                        .required(true)
                        .help("The image (PNG or JPEG)"),
                )
                .arg(
                    Arg::new("output")
                        .value_name("OUT")
                        .required(true)
                        .help("The PNG to write (white edges on black, RGB)"),
                ),
        )
        .subcommand(
            hub_args(
                Command::new("info")
                    .about("Show a model's pipeline, components, weights and scheduler, or what an adapter file (LoRA, LyCORIS) is")
                    .arg(
                        Arg::new("base")
                            .long("base")
                            .value_name("MODEL")
                            .help("With an adapter file as --model: whether it fits this pipeline's models"),
                    ),
            )
            .mut_arg("model", |a| a.required(true)),
        )
}

/// `--model`, `--variant`, `--revision`, `--offline`.
fn hub_args(cmd: Command) -> Command {
    cmd.arg(
        Arg::new("model")
            .long("model")
            .short('m')
            .value_name("MODEL")
            .help("Hub repo id, diffusers folder or single-file checkpoint"),
    )
    .arg(
        Arg::new("variant")
            .long("variant")
            .value_name("VARIANT")
            .help("Weight variant, e.g. fp16"),
    )
    .arg(
        Arg::new("revision")
            .long("revision")
            .value_name("REV")
            .help("Hub branch, tag or commit"),
    )
    .arg(
        Arg::new("offline")
            .long("offline")
            .action(ArgAction::SetTrue)
            .help("Never touch the network (as HF_HUB_OFFLINE=1)"),
    )
    .arg(skip_unsafe_globals())
}

/// `--skip-unsafe-globals`: read PyTorch pickles that name globals torch's
/// `weights_only` loader refuses, leaving those entries out.
fn skip_unsafe_globals() -> Arg {
    Arg::new("skip_unsafe_globals")
        .long("skip-unsafe-globals")
        .action(ArgAction::SetTrue)
        .help(
            "Read .ckpt/.bin pickles that name globals torch's weights_only loader refuses \
             (e.g. Lightning callbacks), skipping those entries; nothing is ever executed",
        )
}

/// The flags of `generate`, `img2img` and `inpaint` (diffusers' call parameters).
fn generation(cmd: Command) -> Command {
    let text = |id: &'static str, long: &'static str, help: &'static str| {
        Arg::new(id)
            .long(long)
            .value_name("TEXT")
            .action(ArgAction::Append)
            .help(help)
    };
    let num = |id: &'static str, long: &'static str, name: &'static str, help: &'static str| {
        // `--strength -0.1` is a (bad) value, not a flag.
        Arg::new(id)
            .long(long)
            .value_name(name)
            .help(help)
            .allow_negative_numbers(true)
    };
    hub_args(cmd)
        .arg(text("prompt", "prompt", "The prompt; repeat for a batch").short('p'))
        .arg(text(
            "negative_prompt",
            "negative-prompt",
            "Negative prompt: one for all prompts, or one per prompt",
        ))
        .arg(text("prompt_2", "prompt-2", "SDXL: prompt for the second text encoder"))
        .arg(text(
            "negative_prompt_2",
            "negative-prompt-2",
            "SDXL: negative prompt for the second text encoder",
        ))
        .arg(
            Arg::new("scheduler")
                .long("scheduler")
                .value_name("NAME")
                .help("Scheduler: diffusers class (EulerDiscreteScheduler) or A1111 name (\"DPM++ 2M Karras\")"),
        )
        .arg(
            Arg::new("scheduler_config")
                .long("scheduler-config")
                .value_name("KEY=VALUE")
                .action(ArgAction::Append)
                .value_parser(args::key_value)
                .help("Scheduler config override; VALUE is JSON or a bare string (repeatable)"),
        )
        .arg(
            num("seed", "seed", "N", "One torch-compatible generator for the whole batch")
                .value_parser(value_parser!(u64))
                .conflicts_with("seeds"),
        )
        .arg(
            num("seeds", "seeds", "A,B,...", "One generator per image")
                .value_parser(args::seed_list),
        )
        .arg(
            num("steps", "steps", "N", "num_inference_steps")
                .value_parser(value_parser!(usize)),
        )
        .arg(num("guidance", "guidance", "F", "guidance_scale").value_parser(value_parser!(f64)))
        .arg(
            num("guidance_rescale", "guidance-rescale", "F", "guidance_rescale (0 = off)")
                .value_parser(value_parser!(f64)),
        )
        .arg(
            num("width", "width", "PX", "Width in pixels (a multiple of 8)")
                .value_parser(value_parser!(usize)),
        )
        .arg(
            num("height", "height", "PX", "Height in pixels (a multiple of 8)")
                .value_parser(value_parser!(usize)),
        )
        .arg(
            num("num_images", "num-images", "N", "num_images_per_prompt")
                .value_parser(value_parser!(usize)),
        )
        .arg(num(
            "latents",
            "latents",
            "FILE",
            "Initial latents: safetensors with a 4-D tensor `latents` (f32/f16/bf16)",
        ))
        .arg(num("eta", "eta", "F", "DDIM eta").value_parser(value_parser!(f64)))
        .arg(
            num("clip_skip", "clip-skip", "N", "Text encoder layers to skip")
                .value_parser(value_parser!(usize)),
        )
        .arg(
            Arg::new("long_prompt")
                .long("long-prompt")
                .action(ArgAction::SetTrue)
                .help("Encode prompts over 77 tokens in chunks instead of truncating"),
        )
        .arg(
            num("strength", "strength", "F", "img2img/inpaint: how much to change, in [0, 1]")
                .value_parser(value_parser!(f64)),
        )
        .arg(num("image", "image", "FILE", "Input image (PNG or JPEG)"))
        .arg(num(
            "mask",
            "mask",
            "FILE",
            "Inpainting mask, white = repaint; the size of --image",
        ))
        .arg(
            num("original_size", "original-size", "HxW", "SDXL micro-conditioning")
                .value_parser(args::size_hw),
        )
        .arg(
            num(
                "crops_coords_top_left",
                "crops-coords-top-left",
                "Y,X",
                "SDXL micro-conditioning",
            )
            .value_parser(args::corner_yx),
        )
        .arg(
            num("target_size", "target-size", "HxW", "SDXL micro-conditioning")
                .value_parser(args::size_hw),
        )
        .arg(
            num("denoising_end", "denoising-end", "F", "SDXL: stop after this fraction")
                .value_parser(value_parser!(f64)),
        )
        .arg(
            num("dtype", "dtype", "DTYPE", "f32, f16 or bf16 [default: f32]")
                .value_parser(args::dtype),
        )
        .arg(
            num("device", "device", "DEVICE", "cpu, or cuda[:N] (built with feature cuda) [default: cpu]")
                .value_parser(args::device),
        )
        .arg(
            num(
                "output",
                "output",
                "PATH",
                "PNG to write; several images get -0, -1, ... before the extension [default: output.png]",
            )
            .short('o'),
        )
        .arg(num(
            "output_latents",
            "output-latents",
            "FILE",
            "Also write the final latents (safetensors, key `latents`)",
        ))
        .arg(
            Arg::new("quiet")
                .long("quiet")
                .short('q')
                .action(ArgAction::SetTrue)
                .help("No progress bars"),
        )
        .arg(
            num(
                "lora",
                "lora",
                "FILE[:WEIGHT]",
                "A LoRA/LyCORIS file (diffusers, kohya, LoHa, LoKr...) at WEIGHT [default: 1]; repeat for several",
            )
            .action(ArgAction::Append)
            .value_parser(args::lora_spec),
        )
        .arg(num(
            "lora_dir",
            "lora-dir",
            "DIR",
            "Where the prompt's A1111 tags <lora:NAME:WEIGHT> find NAME.safetensors (the tags are removed from the prompt)",
        ))
        .arg(
            num(
                "embedding",
                "embedding",
                "FILE[:TOKEN]",
                "A textual-inversion embedding (diffusers, A1111 .pt, kohya, SDXL clip_l/clip_g) under TOKEN [default: the file's, else its stem]; repeatable",
            )
            .action(ArgAction::Append)
            .value_parser(args::embedding_spec),
        )
        .arg(
            Arg::new("fuse_lora")
                .long("fuse-lora")
                .action(ArgAction::SetTrue)
                .help("Merge the LoRAs into the weights before generating (fuse_lora)"),
        )
        .arg(
            num(
                "controlnet",
                "controlnet",
                "DIR_OR_REPO",
                "A ControlNet (diffusers ControlNetModel folder or Hub repo); repeat for several, each with its --control-image",
            )
            .action(ArgAction::Append),
        )
        .arg(
            num(
                "control_image",
                "control-image",
                "FILE",
                "The control image of the matching --controlnet (edges, depth, pose ...), used as it is",
            )
            .action(ArgAction::Append),
        )
        .arg(
            num(
                "controlnet_scale",
                "controlnet-scale",
                "F",
                "controlnet_conditioning_scale: once for all nets or once per net [default: 1; img2img 0.8; SD inpaint 0.5]",
            )
            .action(ArgAction::Append)
            .value_parser(value_parser!(f64)),
        )
        .arg(
            num(
                "control_start",
                "control-start",
                "F",
                "control_guidance_start: the fraction of the steps before a net starts; once or per net [default: 0]",
            )
            .action(ArgAction::Append)
            .value_parser(value_parser!(f64)),
        )
        .arg(
            num(
                "control_end",
                "control-end",
                "F",
                "control_guidance_end: the fraction of the steps after which a net stops; once or per net [default: 1]",
            )
            .action(ArgAction::Append)
            .value_parser(value_parser!(f64)),
        )
        .arg(
            num(
                "t2i_adapter",
                "t2i-adapter",
                "DIR_OR_REPO",
                "A T2I-Adapter (diffusers T2IAdapter folder or Hub repo; `generate` only); repeat for several, each with its --adapter-image",
            )
            .action(ArgAction::Append),
        )
        .arg(
            num(
                "adapter_image",
                "adapter-image",
                "FILE",
                "The image of the matching --t2i-adapter (sketch, depth, pose ...)",
            )
            .action(ArgAction::Append),
        )
        .arg(
            num(
                "adapter_scale",
                "adapter-scale",
                "F",
                "adapter_conditioning_scale: once for all adapters or once per adapter [default: 1]",
            )
            .action(ArgAction::Append)
            .value_parser(value_parser!(f64)),
        )
        .arg(
            num(
                "adapter_factor",
                "adapter-factor",
                "F",
                "SDXL adapter_conditioning_factor: the fraction of the steps the adapters act in [default: 1]",
            )
            .value_parser(value_parser!(f64)),
        )
        .arg(num(
            "control_preprocess",
            "control-preprocess",
            "METHOD",
            "Turn every --control-image into a control map first: canny[:LOW,HIGH] (as cv2.Canny, default 100,200)",
        ))
        .arg(
            Arg::new("guess_mode")
                .long("guess-mode")
                .action(ArgAction::SetTrue)
                .help("ControlNet guess mode: the nets see the conditional half only, their states weighted 0.1 to 1"),
        )
}

/// `diffuse train`: `train_unconditional.py`'s flags, with dashes.
fn train() -> Command {
    let num = |id: &'static str, name: &'static str, help: &'static str| {
        Arg::new(id)
            .long(dashed(id))
            .value_name(name)
            .help(help)
            .allow_negative_numbers(true)
    };
    let flag = |id: &'static str, help: &'static str| {
        Arg::new(id)
            .long(dashed(id))
            .action(ArgAction::SetTrue)
            .help(help)
    };
    Command::new("train")
        .about("Train an unconditional UNet2DModel on a folder of images (diffusers' train_unconditional)")
        .arg(num("train_data_dir", "DIR", "Folder of .png/.jpg training images").required(true))
        .arg(num("output_dir", "DIR", "Where the pipeline, checkpoints, samples and loss curve go").required(true))
        .arg(num("model_config", "FILE", "UNet2DModel config.json (default: train_unconditional's UNet, RGB)"))
        .arg(num("resolution", "PX", "Images are resized (shorter side) and cropped to this square [default: 64]").value_parser(value_parser!(usize)))
        .arg(flag("random_crop", "Crop a random square each time an image is drawn (torchvision's RandomCrop) instead of the center"))
        .arg(flag("random_flip", "Mirror images at random"))
        .arg(num("train_batch_size", "N", "Images per step [default: 16]").value_parser(value_parser!(usize)))
        .arg(num("max_train_steps", "N", "Optimizer steps [default: 10000]").value_parser(value_parser!(u64)))
        .arg(num("learning_rate", "F", "Base learning rate [default: 1e-4]").value_parser(value_parser!(f64)))
        .arg(num("lr_scheduler", "NAME", "constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial [default: cosine]"))
        .arg(num("lr_warmup_steps", "N", "Warm-up steps [default: 500]").value_parser(value_parser!(u64)))
        .arg(num("adam_beta1", "F", "[default: 0.95]").value_parser(value_parser!(f64)))
        .arg(num("adam_beta2", "F", "[default: 0.999]").value_parser(value_parser!(f64)))
        .arg(num("adam_weight_decay", "F", "[default: 1e-6]").value_parser(value_parser!(f64)))
        .arg(num("adam_epsilon", "F", "[default: 1e-8]").value_parser(value_parser!(f64)))
        .arg(num("max_grad_norm", "F", "Gradient-norm clipping, 0 = off [default: 1.0]").value_parser(value_parser!(f64)))
        .arg(num("mixed_precision", "MODE", "no, fp16 (dynamic loss scaling) or bf16: the network runs in half precision over f32 weights [default: no]"))
        .arg(flag("use_ema", "Keep a moving average of the weights and save it"))
        .arg(num("ema_inv_gamma", "F", "[default: 1.0]").value_parser(value_parser!(f64)))
        .arg(num("ema_power", "F", "[default: 0.75]").value_parser(value_parser!(f64)))
        .arg(num("ema_max_decay", "F", "[default: 0.9999]").value_parser(value_parser!(f64)))
        .arg(num("prediction_type", "TYPE", "epsilon, v_prediction or sample [default: epsilon]"))
        .arg(num("snr_gamma", "F", "Min-SNR-gamma loss weighting (5.0 recommended)").value_parser(value_parser!(f64)))
        .arg(num("noise_offset", "F", "Noise offset [default: 0]").value_parser(value_parser!(f64)))
        .arg(num("ddpm_num_steps", "N", "Training timesteps [default: 1000]").value_parser(value_parser!(usize)))
        .arg(num("ddpm_beta_schedule", "NAME", "linear, scaled_linear, squaredcos_cap_v2 [default: linear]"))
        .arg(num("checkpointing_steps", "N", "Checkpoint every N steps, 0 = only at the end [default: 500]").value_parser(value_parser!(u64)))
        .arg(num("checkpoints_total_limit", "N", "Keep only the newest N checkpoints").value_parser(value_parser!(usize)))
        .arg(num("resume_from_checkpoint", "DIR|latest", "Continue a run from a checkpoint"))
        .arg(num("save_images_steps", "N", "A sample grid every N steps [default: only at the end]").value_parser(value_parser!(u64)))
        .arg(num("eval_batch_size", "N", "Images in a sample grid [default: 16]").value_parser(value_parser!(usize)))
        .arg(num("num_inference_steps", "N", "DDIM steps for sample grids [default: 50]").value_parser(value_parser!(usize)))
        .arg(num("pipeline_class", "NAME", "DDPMPipeline or DDIMPipeline [default: DDPMPipeline]"))
        .arg(num("seed", "N", "Seed of weights, data order and noise [default: 0]").value_parser(value_parser!(u64)))
        .arg(num("device", "DEVICE", "cpu, or cuda[:N] (built with feature cuda) [default: cpu]").value_parser(args::device))
        .arg(flag("quiet", "No progress bar"))
}

/// `diffuse train-lora` (`train_text_to_image_lora.py`'s and
/// `train_dreambooth_lora.py`'s flags, with dashes) and, `full`, `diffuse
/// train-text-to-image` (`train_text_to_image.py`'s).
fn fine_tune(full: bool) -> Command {
    let num = |id: &'static str, name: &'static str, help: &'static str| {
        Arg::new(id)
            .long(dashed(id))
            .value_name(name)
            .help(help)
            .allow_negative_numbers(true)
    };
    let flag = |id: &'static str, help: &'static str| {
        Arg::new(id)
            .long(dashed(id))
            .action(ArgAction::SetTrue)
            .help(help)
    };
    let command = if full {
        Command::new("train-text-to-image")
            .about("Fine-tune every weight of a Stable Diffusion 1.x/2.x/XL UNet on captioned images (diffusers' train_text_to_image)")
            .arg(flag("use_ema", "Keep a moving average of the weights (EMAModel: decay 0.9999) and save it"))
    } else {
        Command::new("train-lora")
            .about("Train a LoRA of a Stable Diffusion 1.x/2.x/XL UNet on captioned images (diffusers' train_text_to_image_lora / train_dreambooth_lora)")
            .arg(num("rank", "R", "LoRA rank (and alpha) on the attention projections [default: 4]").value_parser(value_parser!(usize)))
            .arg(flag("output_kohya_format", "Also write the LoRA in kohya-ss's format (pytorch_lora_weights_kohya.safetensors: A1111, ComfyUI)"))
    };
    command
        .arg(num("pretrained_model_name_or_path", "DIR_OR_REPO", "The base pipeline: a diffusers folder or Hub repo").required(true))
        .arg(num("variant", "VARIANT", "Weight variant of the base, e.g. fp16"))
        .arg(num("revision", "REV", "Hub branch, tag or commit of the base"))
        .arg(flag("offline", "Never touch the network (the Hub cache only)"))
        .arg(num("train_data_dir", "DIR", "Images with captions: metadata.jsonl (file_name, text) or a .txt beside each image"))
        .arg(num("caption_column", "NAME", "The caption field of metadata.jsonl [default: text]"))
        .arg(num("instance_data_dir", "DIR", "DreamBooth: the subject's images (captioned by --instance-prompt)"))
        .arg(num("instance_prompt", "TEXT", "DreamBooth: the prompt of every instance image, e.g. \"a photo of sks dog\""))
        .arg(flag("with_prior_preservation", "DreamBooth: train on class images too (their loss weighted by --prior-loss-weight)"))
        .arg(num("class_data_dir", "DIR", "DreamBooth: class images (generated with --class-prompt until there are --num-class-images)"))
        .arg(num("class_prompt", "TEXT", "DreamBooth: the class images' prompt, e.g. \"a photo of a dog\""))
        .arg(num("num_class_images", "N", "DreamBooth: class images wanted [default: 100]").value_parser(value_parser!(usize)))
        .arg(num("prior_loss_weight", "F", "DreamBooth: weight of the class images' loss [default: 1.0]").value_parser(value_parser!(f64)))
        .arg(num("sample_batch_size", "N", "DreamBooth: images per call when generating class images [default: 4]").value_parser(value_parser!(usize)))
        .arg(num("output_dir", "DIR", if full {
            "Where the pipeline, checkpoints, validation grids and loss curve go [default: sd-model-finetuned]"
        } else {
            "Where the LoRA, checkpoints, validation grids and loss curve go [default: sd-model-finetuned-lora]"
        }))
        .arg(num("resolution", "PX", "Images are resized (shorter side) and cropped to this square [default: 512]").value_parser(value_parser!(usize)))
        .arg(flag("center_crop", "Crop the center (default: a random crop each time an image is drawn)"))
        .arg(num("image_interpolation_mode", "MODE", "nearest, bilinear, bicubic or lanczos [default: lanczos for train-lora on captioned images, else bilinear, as the scripts]"))
        .arg(flag("random_flip", "Mirror images at random"))
        .arg(num("train_batch_size", "N", "Images per step [default: 16]").value_parser(value_parser!(usize)))
        .arg(num("max_train_steps", "N", "Optimizer steps [default: 1000]").value_parser(value_parser!(u64)))
        .arg(num("learning_rate", "F", "Base learning rate [default: 1e-4]").value_parser(value_parser!(f64)))
        .arg(num("lr_scheduler", "NAME", "constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial [default: constant]"))
        .arg(num("lr_warmup_steps", "N", "Warm-up steps [default: 500]").value_parser(value_parser!(u64)))
        .arg(num("adam_beta1", "F", "[default: 0.9]").value_parser(value_parser!(f64)))
        .arg(num("adam_beta2", "F", "[default: 0.999]").value_parser(value_parser!(f64)))
        .arg(num("adam_weight_decay", "F", "[default: 1e-2]").value_parser(value_parser!(f64)))
        .arg(num("adam_epsilon", "F", "[default: 1e-8]").value_parser(value_parser!(f64)))
        .arg(num("max_grad_norm", "F", "Gradient-norm clipping of the trained weights, 0 = off [default: 1.0]").value_parser(value_parser!(f64)))
        .arg(num("mixed_precision", "MODE", "no, fp16 (dynamic loss scaling) or bf16 [default: no]"))
        .arg(flag("cache_latents", "Encode every image with the VAE once up front (needs --center-crop, no --random-flip)"))
        .arg(flag("gradient_checkpointing", "Recompute memory-bound ops in the backward pass instead of keeping their outputs (less memory, a little slower; docs/training.md)"))
        .arg(num("prediction_type", "TYPE", "epsilon or v_prediction [default: the scheduler's]"))
        .arg(num("snr_gamma", "F", "Min-SNR-gamma loss weighting (5.0 recommended)").value_parser(value_parser!(f64)))
        .arg(num("noise_offset", "F", "Noise offset [default: 0]").value_parser(value_parser!(f64)))
        .arg(num("proportion_empty_prompts", "F", "Share of captions replaced by \"\" [default: 0]").value_parser(value_parser!(f64)))
        .arg(num("checkpointing_steps", "N", "Checkpoint every N steps, 0 = only at the end [default: 500]").value_parser(value_parser!(u64)))
        .arg(num("checkpoints_total_limit", "N", "Keep only the newest N checkpoints").value_parser(value_parser!(usize)))
        .arg(num("resume_from_checkpoint", "DIR|latest", "Continue a run from a checkpoint"))
        .arg(num("validation_prompt", "TEXT", "Generate validation images with the LoRA (at --validation-steps and at the end)"))
        .arg(num("num_validation_images", "N", "[default: 4]").value_parser(value_parser!(usize)))
        .arg(num("validation_steps", "N", "Validation every N steps [default: only at the end]").value_parser(value_parser!(u64)))
        .arg(num("num_inference_steps", "N", "Denoising steps of validation images [default: 30]").value_parser(value_parser!(usize)))
        .arg(num("seed", "N", "Seed of the LoRA's initialisation, data order, noise and validation [default: 0]").value_parser(value_parser!(u64)))
        .arg(num("device", "DEVICE", "cpu, or cuda[:N] (built with feature cuda) [default: cpu]").value_parser(args::device))
        .arg(flag("quiet", "No progress bar"))
}

/// `train_data_dir` → `train-data-dir` (clap keeps `&'static str` names; the
/// command is built once per process).
fn dashed(id: &'static str) -> &'static str {
    Box::leak(id.replace('_', "-").into_boxed_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn repeated_flags_collect_and_seeds_conflict() {
        let m = command()
            .try_get_matches_from([
                "diffuse",
                "generate",
                "-p",
                "a",
                "--prompt",
                "b",
                "--scheduler-config",
                "use_karras_sigmas=true",
                "--scheduler-config",
                "timestep_spacing=trailing",
                "--seeds",
                "1,2",
            ])
            .unwrap();
        let (_, sub) = m.subcommand().unwrap();
        let prompts: Vec<&String> = sub.get_many("prompt").unwrap().collect();
        assert_eq!(prompts, ["a", "b"]);
        assert_eq!(
            sub.get_many::<(String, serde_json::Value)>("scheduler_config")
                .unwrap()
                .count(),
            2
        );
        assert_eq!(sub.get_one::<Vec<u64>>("seeds").unwrap(), &vec![1, 2]);
        let err = command()
            .try_get_matches_from(["diffuse", "generate", "--seed", "1", "--seeds", "1,2"])
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn img2img_needs_an_image() {
        let err = command()
            .try_get_matches_from(["diffuse", "img2img", "-p", "x"])
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let err = command()
            .try_get_matches_from(["diffuse", "generate", "--original-size", "64"])
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }
}
