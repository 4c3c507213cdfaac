//! Parsers for the flag values that are more than a number: `KEY=VALUE`
//! scheduler overrides, `HxW` sizes, `Y,X` corners, seed lists, dtypes and
//! devices. Each returns a message that names what was expected, which clap
//! prefixes with the flag and the value given.

use diffusion_models::Precision;
use serde_json::Value;

/// `KEY=VALUE` for `--scheduler-config`: the value is JSON when it parses as
/// JSON (`true`, `0.5`, `"x"`, `[1, 2]`), otherwise the bare word as a string
/// (`timestep_spacing=trailing`), so shells need no extra quoting.
pub fn key_value(s: &str) -> Result<(String, Value), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("`{s}` has an empty KEY"));
    }
    let value = value.trim();
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok((key.to_string(), value))
}

/// `COMPONENT.FIELD=VALUE` for `diffuse convert --set`: a config field of one
/// component of the converted pipeline (`unet`, `vae`, `text_encoder`,
/// `text_encoder_2`, `scheduler`); VALUE as for [`key_value`].
pub fn component_field_value(s: &str) -> Result<(String, String, Value), String> {
    let bad = || format!("`{s}` is not COMPONENT.FIELD=VALUE (e.g. vae.scaling_factor=0.13025)");
    if !s.contains('=') {
        return Err(bad());
    }
    let (key, value) = key_value(s)?;
    match key.split_once('.') {
        // Config fields are top-level names: a second dot is a typo.
        Some((component, field))
            if !component.is_empty() && !field.is_empty() && !field.contains('.') =>
        {
            Ok((component.to_string(), field.to_string(), value))
        }
        _ => Err(bad()),
    }
}

/// `HxW` (height first, as diffusers' `(height, width)` tuples): `1024x768`.
pub fn size_hw(s: &str) -> Result<(usize, usize), String> {
    let (h, w) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("`{s}` is not HEIGHTxWIDTH (e.g. 1024x1024)"))?;
    let num = |v: &str| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("`{s}` is not HEIGHTxWIDTH with positive integers"))
    };
    Ok((num(h)?, num(w)?))
}

/// `Y,X` (top first, as diffusers' `crops_coords_top_left`): `0,0`.
pub fn corner_yx(s: &str) -> Result<(usize, usize), String> {
    let (y, x) = s
        .split_once(',')
        .ok_or_else(|| format!("`{s}` is not Y,X (e.g. 0,0)"))?;
    let num = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("`{s}` is not Y,X with non-negative integers"))
    };
    Ok((num(y)?, num(x)?))
}

/// `a,b,c`: one seed per image.
pub fn seed_list(s: &str) -> Result<Vec<u64>, String> {
    s.split(',')
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("`{v}` in `{s}` is not a seed (a non-negative integer)"))
        })
        .collect()
}

/// `f32`, `f16` or `bf16` (diffusers' `torch_dtype`).
pub fn dtype(s: &str) -> Result<Precision, String> {
    Precision::parse(s).ok_or_else(|| format!("`{s}` is not one of f32, f16, bf16"))
}

/// Where the models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// burn-flex on the CPU.
    Cpu,
    /// NVIDIA GPU `n` (only with the crate feature `cuda`).
    Cuda(usize),
}

impl Device {
    /// The name as given on the command line (for the saved parameters).
    pub fn name(self) -> String {
        match self {
            Device::Cpu => "cpu".into(),
            Device::Cuda(0) => "cuda".into(),
            Device::Cuda(n) => format!("cuda:{n}"),
        }
    }
}

/// `cpu`, `cuda` or `cuda:N`.
pub fn device(s: &str) -> Result<Device, String> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("`{s}` is not cpu, cuda or cuda:N")),
    }
}

/// `--lora FILE[:WEIGHT]`: the path and what follows its last `:` (when
/// that is a weight, not part of the path).
pub fn lora_spec(s: &str) -> Result<(String, f64), String> {
    let (path, weight) = match s.rsplit_once(':') {
        Some((path, rest)) if !path.is_empty() && !rest.contains(['/', '\\']) => {
            let w = rest
                .parse::<f64>()
                .ok()
                .filter(|w| w.is_finite())
                .ok_or_else(|| format!("--lora {s}: `{rest}` is not a weight (FILE[:WEIGHT])"))?;
            (path.to_string(), w)
        }
        _ => (s.to_string(), 1.0),
    };
    if path.is_empty() {
        return Err(format!("--lora {s}: an empty path"));
    }
    Ok((path, weight))
}

/// `--embedding FILE[:TOKEN]`: the path and the token to load it under
/// (absent: the file's own, or its stem). A path that exists as given is
/// taken whole.
pub fn embedding_spec(s: &str) -> Result<(String, Option<String>), String> {
    if s.is_empty() {
        return Err("--embedding \"\": an empty path".into());
    }
    if std::path::Path::new(s).is_file() {
        return Ok((s.to_string(), None));
    }
    match s.rsplit_once(':') {
        Some((path, token)) if !path.is_empty() && !token.trim().is_empty() => {
            Ok((path.to_string(), Some(token.to_string())))
        }
        _ => Ok((s.to_string(), None)),
    }
}

/// A1111's `<lora:NAME:WEIGHT>` tags: the prompt without them, and each
/// tag's name and weight (1 when absent), in order.
pub fn lora_tags(prompt: &str) -> Result<(String, Vec<(String, f64)>), String> {
    let mut rest = prompt;
    let mut text = String::new();
    let mut tags = Vec::new();
    while let Some(start) = rest.find("<lora:") {
        let Some(len) = rest[start..].find('>') else {
            return Err(format!(
                "prompt {prompt:?}: `<lora:` without its closing `>`"
            ));
        };
        let inner = &rest[start + "<lora:".len()..start + len];
        let mut parts = inner.split(':');
        let name = parts.next().unwrap_or("").trim();
        let weight = match parts.next() {
            None => 1.0,
            Some(w) => w
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|w| w.is_finite())
                .ok_or_else(|| format!("prompt tag <lora:{inner}>: `{w}` is not a weight"))?,
        };
        if name.is_empty() {
            return Err(format!("prompt tag <lora:{inner}>: no name"));
        }
        tags.push((name.to_string(), weight));
        text.push_str(&rest[..start]);
        rest = &rest[start + len + 1..];
    }
    text.push_str(rest);
    Ok((text, tags))
}

/// diffusers' check on `height`/`width`: a positive multiple of 8 (the VAE's
/// scale factor), caught here before any model is loaded.
pub fn check_pixels(flag: &str, v: usize) -> Result<(), String> {
    if v == 0 || !v.is_multiple_of(8) {
        Err(format!("{flag} {v}: must be a positive multiple of 8"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_values_parse_json_or_take_the_word() {
        assert_eq!(
            key_value("use_karras_sigmas=true").unwrap(),
            ("use_karras_sigmas".into(), json!(true))
        );
        assert_eq!(key_value("eta = 0.5").unwrap(), ("eta".into(), json!(0.5)));
        assert_eq!(
            key_value("timestep_spacing=trailing").unwrap(),
            ("timestep_spacing".into(), json!("trailing"))
        );
        assert_eq!(
            key_value("betas=[1, 2]").unwrap(),
            ("betas".into(), json!([1, 2]))
        );
        assert_eq!(
            key_value("s=\"true\"").unwrap(),
            ("s".into(), json!("true"))
        );
        // Only the first `=` splits.
        assert_eq!(key_value("a=b=c").unwrap(), ("a".into(), json!("b=c")));
        assert_eq!(key_value("k=").unwrap(), ("k".into(), json!("")));
        assert!(key_value("novalue").unwrap_err().contains("KEY=VALUE"));
        assert_eq!(
            component_field_value("vae.scaling_factor=0.13").unwrap(),
            (
                "vae".into(),
                "scaling_factor".into(),
                serde_json::json!(0.13)
            )
        );
        for bad in ["scaling_factor=1", ".x=1", "vae.=1", "vae.x", "unet.a.b=x"] {
            let err = component_field_value(bad).unwrap_err();
            assert!(err.contains("COMPONENT.FIELD=VALUE"), "{bad}: {err}");
        }
        assert!(key_value("=1").unwrap_err().contains("empty KEY"));
    }

    #[test]
    fn sizes_are_height_by_width() {
        assert_eq!(size_hw("1024x768").unwrap(), (1024, 768));
        assert_eq!(size_hw("64X32").unwrap(), (64, 32));
        assert!(size_hw("1024").is_err());
        assert!(size_hw("0x8").is_err());
        assert!(size_hw("ax8").is_err());
        assert!(size_hw("-8x8").is_err());
        assert_eq!(corner_yx("12, 0").unwrap(), (12, 0));
        assert!(corner_yx("12").is_err());
        assert!(corner_yx("1,-1").is_err());
    }

    #[test]
    fn lora_flags_and_prompt_tags() {
        assert_eq!(
            lora_spec("a/b.safetensors").unwrap(),
            ("a/b.safetensors".into(), 1.0)
        );
        assert_eq!(lora_spec("b.pt:0.5").unwrap(), ("b.pt".into(), 0.5));
        assert!(lora_spec("b.pt:x").unwrap_err().contains("`x`"));
        let (text, tags) = lora_tags("a cat <lora:ink:0.7>, <lora:style>").unwrap();
        assert_eq!(text, "a cat , ");
        assert_eq!(tags, vec![("ink".into(), 0.7), ("style".into(), 1.0)]);
        assert!(lora_tags("a <lora:x").is_err());
        assert!(lora_tags("a <lora::1>").is_err());
        assert_eq!(
            embedding_spec("x/ink.pt:<ink>").unwrap(),
            ("x/ink.pt".into(), Some("<ink>".into()))
        );
        assert_eq!(
            embedding_spec("x/ink.pt").unwrap(),
            ("x/ink.pt".into(), None)
        );
    }

    #[test]
    fn seed_lists() {
        assert_eq!(seed_list("1,2, 3").unwrap(), vec![1, 2, 3]);
        assert_eq!(seed_list("7").unwrap(), vec![7]);
        assert!(seed_list("1,,2").unwrap_err().contains("not a seed"));
        assert!(seed_list("1,-2").is_err());
        assert!(seed_list("").is_err());
    }

    #[test]
    fn dtypes_devices_and_pixels() {
        assert_eq!(dtype("bf16").unwrap(), Precision::BF16);
        assert_eq!(dtype("fp16").unwrap(), Precision::F16);
        assert!(dtype("f8").is_err());
        assert_eq!(device("cpu").unwrap(), Device::Cpu);
        assert_eq!(device("cuda").unwrap(), Device::Cuda(0));
        assert_eq!(device("cuda:2").unwrap(), Device::Cuda(2));
        assert!(device("gpu").is_err());
        assert_eq!(Device::Cuda(2).name(), "cuda:2");
        assert!(check_pixels("--width", 512).is_ok());
        assert!(check_pixels("--width", 0).is_err());
        assert!(
            check_pixels("--width", 13)
                .unwrap_err()
                .contains("--width 13")
        );
    }
}
