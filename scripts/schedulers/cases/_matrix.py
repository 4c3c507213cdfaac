"""Helpers to build config matrices for the case lists."""

SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
COSINE = {"beta_schedule": "squaredcos_cap_v2"}
LINEAR = {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}


def trained_betas(n=1000):
    """A fixed custom beta list (a slightly bent linear schedule)."""
    return [0.0001 + (0.02 - 0.0001) * (i / (n - 1)) ** 1.3 for i in range(n)]


def case(class_name, name, config=None, steps=10, **extra):
    c = {"class_name": class_name, "name": name, "config": dict(config or {})}
    st = extra.pop("set_timesteps", None)
    c["set_timesteps"] = st if st is not None else {"num_inference_steps": steps}
    c.update(extra)
    return c
