"""`flintlm info`: what this machine offers flintlm and what flintlm chose on it.

The CPU's features, the instruction-set tier the kernels are built for (and whether it was
forced), torch's own CPU capability and who capped it, and the measured dispatch table for a
model (calibrated now if it is not cached yet).
"""

from __future__ import annotations

import json
from typing import Any

# The features that decide a tier or a path, as /proc/cpuinfo names them.
RELEVANT_FLAGS = ("avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
                  "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd",
                  "asimddp", "i8mm", "bf16", "sve")


def collect(model: str, with_table: bool = True, refresh: bool = False) -> dict[str, Any]:
    import torch

    import flintlm
    from flintlm.config import ModelConfig
    from flintlm.engine.cpu_dispatch import measured_dispatch
    from flintlm.kernels import isa, native

    features = isa.cpu_features()
    library = native.load()
    report: dict[str, Any] = {
        "flintlm": flintlm.__version__,
        "torch": torch.__version__,
        "cpu": {"model": features.model_name, "machine": features.machine,
                "cores": torch.get_num_threads(),
                "features": [f for f in RELEVANT_FLAGS if f in features.flags]},
        "tiers": {"supported": list(isa.supported_tiers()), "selected": isa.selected_tier(),
                  "forced": isa.forced_tier()},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_caps": {name: {"value": value, "set_by": set_by}
                       for name, (value, set_by) in isa.torch_caps().items()},
        "kernels": None if library is None else {
            "library": str(library.path), "tier": library.tier,
            "int8_dot_products": library.has_int8_dot},
    }
    if with_table:
        table = measured_dispatch(ModelConfig(model=model), torch.device("cpu"), refresh)
        report["model"] = model
        report["dispatch"] = None if table is None else table.to_json()
    return report


def render(report: dict[str, Any], with_timings: bool) -> str:
    cpu, tiers, kernels = report["cpu"], report["tiers"], report["kernels"]
    forced = f" (forced by FLINTLM_CPU_ISA={tiers['forced']})" if tiers["forced"] else ""
    lines = [
        f"flintlm {report['flintlm']}, torch {report['torch']} "
        f"(CPU capability {report['torch_cpu_capability']})",
        f"CPU: {cpu['model'] or 'unknown'} ({cpu['machine']}, {cpu['cores']} threads)",
        f"features: {' '.join(cpu['features']) or 'none of note'}",
        "torch caps: " + (", ".join(f"{name}={cap['value']} (set by {cap['set_by']})"
                                    for name, cap in report["torch_caps"].items())
                          or "none (torch and oneDNN use the best this CPU has)"),
        f"tiers this CPU runs: {', '.join(tiers['supported'])}; kernels built for: "
        f"{tiers['selected']}{forced}",
        "kernels: " + ("not available (no C compiler?): torch paths only" if kernels is None
                       else f"{kernels['library']} (int8 dot products: "
                            f"{'yes' if kernels['int8_dot_products'] else 'no'})"),
    ]
    table = report.get("dispatch")
    if "dispatch" in report:
        if table is None:
            lines.append(f"dispatch for {report['model']}: none (nothing measured applies)")
        else:
            lines += [f"dispatch for {report['model']} (measured in {table['seconds']} s): "
                      f"dtype {table['dtype']}",
                      "  step tokens  path    threads  ms/step (matmuls)"]
            for choice in table["choices"]:
                lines.append(f"  <= {choice['step_size']:<8} {choice['path']:<7} "
                             f"{choice['num_threads']:<8} {choice['ms']:.2f}")
            if with_timings:
                lines.append("  every timing: step tokens, path, dtype, threads, ms")
                for t in table["timings"]:
                    lines.append(f"    {t['step_size']:<5} {t['path']:<6} {t['dtype']:<9} "
                                 f"{t['num_threads']:<3} {t['ms']:.2f}")
    return "\n".join(lines)


def run(model: str, as_json: bool, with_timings: bool, with_table: bool,
        refresh: bool = False) -> str:
    report = collect(model, with_table, refresh)
    return json.dumps(report, indent=1) if as_json else render(report, with_timings)
