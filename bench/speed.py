"""Time a FlashFace step against the plain SD1.5 step, each speed lever off and on, in one run.

    python bench/speed.py [--size 512] [--batch 1] [--refs 4] [--repeats 3] [--steps 2] [--dtype fp16]
                          [--attention pytorch] [--each-lever] [--compile inductor]
                          [--official PATH_TO_A_CHECKOUT_OF_ali-vilab/FlashFace]

Builds the real SD1.5-sized FlashFace architecture with random weights (nothing is
downloaded) and, under ``torch.inference_mode()`` as ComfyUI's executor runs nodes, times on
ComfyUI's device: one plain U-Net evaluation, a plain CFG step, the reference pass alone,
the two- and three-evaluation FlashFace steps with every lever off (``*_base``) and on
(a first run: the reference pass computed), the same steps of a repeat run (reference pass
cached), the three-evaluation step with two people (two random reference sets, left and right
regions and face boxes; a first run and a repeat run) beside the second person's reference
pass, and whole short sampling runs through the FlashFace sampler (levers off, a first run
with and without the prefetched reference pass, a repeat run; the JSON gives each run per step).
Variants are interleaved round by round and each figure is the median
of its rounds after a warm-up (wall clock; the JSON also has the process CPU time). Prints a table, then one
JSON line with every figure, its ratio to the plain CFG step, the attention ComfyUI chose
and each variant's peak memory (on CUDA, the allocator's peak above the loaded models).

With ``--compile BACKEND`` the plain CFG step, the FlashFace steps and the runs are also
timed on MODELs compiled by ComfyUI's own ``TorchCompileModel`` code (``inductor`` or
``cudagraphs``); their first calls compile, are timed apart (``compile_s``) and are not in
the medians.

With ``--official DIR`` the weights are the official U-Net's (random, converted with the pack's
checkpoint conversion), and the official U-Net's two- and three-condition steps are timed in
the same rounds. Before timing, both models' outputs for those steps are compared and the
relative differences printed: the two must compute the same thing for the timing to mean
anything. The official code attends with ``F.scaled_dot_product_attention``; ComfyUI on the
CPU picks its sub-quadratic attention unless started with ``--use-pytorch-cross-attention``
(``--attention pytorch`` here), so compare both ways.
"""

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Guidance of the sampling runs: the text and reference scales, and reference guidance from halfway.
TEXT_GUIDANCE, REFERENCE_GUIDANCE, REFERENCE_GUIDANCE_START = 7.5, 3.2, 0.5


def sd15_unet_config(model_channels: int = 320) -> dict:
    return {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
        "adm_in_channels": None, "in_channels": 5, "out_channels": 4, "model_channels": model_channels,
        "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "channel_mult": [1, 2, 4, 4],
        "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768,
        "use_temporal_resblock": False, "use_temporal_attention": False,
    }


class PeakMemory:
    """Peak memory above the start of a block (``absolute``: in all): CUDA's allocator counter,
    else the process RSS sampled every 5 ms."""

    def __init__(self, device, absolute: bool = False):
        import psutil
        import torch

        self.torch, self.device, self.process, self.absolute = torch, device, psutil.Process(), absolute

    def __enter__(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            self.start = 0 if self.absolute else self.torch.cuda.memory_allocated()
        else:
            self.peak = self.process.memory_info().rss
            self.start = 0 if self.absolute else self.peak
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
            self.mb = (self.torch.cuda.max_memory_allocated() - self.start) / 2**20
        else:
            self.running = False
            self.thread.join()
            self.mb = (self.peak - self.start) / 2**20


def count_flops(steps: dict, labels: dict) -> int:
    """Print the GFLOP of each step variant as torch counts them (2 per multiply-add of every
    matmul, batched matmul and convolution; attention is the product of its two matmuls)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    gflop = {}
    # The counter sees no fused attention kernel on the CPU: the official code's
    # F.scaled_dot_product_attention is counted through its plain matrix products.
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH):
        steps["ff2_cached_s"]()  # fill the cache, so the repeat-run steps count what they run
        steps["ff3_cached_s"]()
        steps["ff3_two_people_cached_s"]()
        for name, fn in steps.items():
            counter = FlopCounterMode(display=False)
            with counter:
                fn()
            gflop[name[:-2] + "_gflop"] = round(counter.get_total_flops() / 1e9, 3)
    for name, value in gflop.items():
        print(f"{labels[name[:-6] + '_s']:52} {value:11.3f} GFLOP")
    print(json.dumps(gflop))
    return 0


def relative_difference(ours: list, official) -> float:
    """||ours - official|| / ||official|| over a step's rows, ``official`` being the batched output."""
    import torch

    official = official.float().cpu()
    return ((torch.cat(ours) - official).norm() / official.norm()).item()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="image size in pixels (latent = size / 8); 768 as an option")
    parser.add_argument("--batch", type=int, default=1, help="images per step")
    parser.add_argument("--refs", type=int, default=4, help="reference faces (16 as an option)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each step variant")
    parser.add_argument("--steps", type=int, default=2, help="steps of the whole sampling runs (0: skip them)")
    parser.add_argument("--run-repeats", type=int, default=1, help="timed repeats of each sampling run")
    parser.add_argument("--flops", action="store_true", help="count each step variant's FLOPs (torch's FlopCounterMode) instead of timing")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None, help="weights (default: ComfyUI's choice)")
    parser.add_argument("--each-lever", action="store_true",
                        help="also time the steps with one lever on at a time (the shared encoder, the merged attention)")
    parser.add_argument("--channels", type=int, default=320,
                        help="U-Net base channels (SD1.5: 320; smaller only to check the script itself quickly)")
    parser.add_argument("--attention", choices=("default", "pytorch"), default="default",
                        help="default: ComfyUI's choice for the device (sub-quadratic on the CPU); pytorch: what "
                             "ComfyUI runs with --use-pytorch-cross-attention (its default on NVIDIA GPUs)")
    parser.add_argument("--compile", choices=("inductor", "cudagraphs"), default=None,
                        help="also time MODELs compiled as ComfyUI's TorchCompileModel node compiles them")
    parser.add_argument("--official", type=Path, metavar="DIR",
                        help="a checkout of https://github.com/ali-vilab/FlashFace: also time its U-Net on the same weights")
    args = parser.parse_args(argv)
    if args.flops and args.attention == "pytorch":
        parser.error("--flops counts with the default attention: torch's counter does not see the fused kernels --attention pytorch uses")
    if args.flops and args.compile:
        parser.error("--flops counts the uncompiled steps: a compiled step runs the same products")
    if args.official:
        from official import check_checkout

        if args.channels != 320:
            parser.error("--official needs --channels 320: the official code builds its 5-channel input layer at 320 channels")
        args.official = check_checkout(args.official)

    from flashface_core.tools.host import import_comfyui

    import_comfyui()
    import comfy.cli_args

    if args.attention == "pytorch":
        comfy.cli_args.args.use_pytorch_cross_attention = True
    import comfy.ldm.modules.attention
    import comfy.model_management
    import comfy.model_patcher
    import comfy.utils
    import torch

    from flashface_core import contract
    from flashface_core.guidance.sampling import sample
    from flashface_core.injection import wrappers
    from flashface_core.injection.reference_pass import compute_reference_features
    from flashface_core.injection.apply import apply_flashface
    from flashface_core.model.flashface_model import FlashFaceConfig
    from flashface_core.model.loading import TORCH_DTYPES
    from flashface_core.model.face_position import FacePosition
    from flashface_core.model.references import FlashFaceReferences
    from flashface_core.people.person import add_person
    from flashface_core.people.regions import Region, people_in_picture
    from flashface_core.tools.golden_model import evaluate_conditions

    comfy.utils.PROGRESS_BAR_ENABLED = False
    device = comfy.model_management.get_torch_device()
    config = FlashFaceConfig(sd15_unet_config(args.channels))
    dtype = TORCH_DTYPES[args.dtype] if args.dtype else comfy.model_management.unet_dtype(model_params=860_000_000)
    config.set_inference_dtype(dtype, comfy.model_management.unet_manual_cast(dtype, device))
    if args.official and device.type != "cuda" and dtype != torch.float32:
        raise SystemExit(f"--official on {device.type} runs the official model in float32: leave --dtype out or pass fp32.")
    model = config.get_model({})
    if args.official:
        from official import OfficialStep, build_official_unet, official_attention

        from flashface_core.model.key_layout import convert_official

        official_unet = build_official_unet(args.official, args.channels, device, seed=0)
        model.load_model_weights(convert_official(official_unet.state_dict())[0])
    else:
        torch.manual_seed(0)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_(0.0, 0.02)
    plain = comfy.model_patcher.ModelPatcher(model, device, comfy.model_management.unet_offload_device())
    flashface = plain.clone()
    wrappers.install(flashface)

    latent = args.size // 8
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 4, latent, latent, generator=generator)
    positive, negative = torch.randn(1, 77, 768, generator=generator), torch.randn(1, 77, 768, generator=generator)
    mask = torch.zeros(latent, latent)  # the face-position box, as the demo's default bbox puts it
    mask[latent // 4:3 * latent // 4, latent // 4:3 * latent // 4] = 1.0
    references = FlashFaceReferences(torch.randn(args.refs, 4, 28, 28, generator=generator))
    with_refs = apply_flashface(flashface, references, [[negative, {}]], 1.2)
    # Two people: the first person's references and another random set, left and right.
    second_references = FlashFaceReferences(torch.randn(args.refs, 4, 28, 28, generator=generator))
    people = None
    for person_references, region, face in ((references, (0.0, 0.0, 0.5, 1.0), (0.1, 0.25, 0.4, 0.75)),
                                            (second_references, (0.5, 0.0, 1.0, 1.0), (0.6, 0.25, 0.9, 0.75))):
        people = add_person(people, person_references, Region(box=region), FacePosition(box=face), 1.0)
    with_people = apply_flashface(flashface, people, [[negative, {}]], 1.2)
    # What the sampler's OUTER_SAMPLE wrapper puts on every condition (evaluate_conditions runs no sampler).
    _, regions, face_positions = people_in_picture(people.people, args.batch, latent, latent)
    people_extra = {contract.REGIONS_KEY: regions, contract.FACE_MASK_KEY: face_positions}
    cache = wrappers.reference_cache(flashface)

    ALL_OFF = contract.SpeedSettings(cache_reference_pass=False, share_encoder=False, merged_attention=False,
                                     prefetch_reference_pass=False)
    guidance = contract.GuidanceSettings(text_guidance=TEXT_GUIDANCE, reference_guidance=REFERENCE_GUIDANCE,
                                         reference_start=REFERENCE_GUIDANCE_START, early_strength=0.85, cfg_rescale=0.0)

    def levers(speed, source=with_refs):
        patched = source.clone()
        contract.set_speed(patched, speed)
        return patched

    base, first, repeat = levers(ALL_OFF), levers(contract.SpeedSettings(cache_reference_pass=False)), levers(contract.SpeedSettings())
    two = ([positive, negative], [0.85, 0.85], 900)  # before reference guidance
    three = ([positive, negative, positive], [0.0, 0.0, 1.2], 500)  # after it starts
    two_people_first, two_people_repeat = (levers(contract.SpeedSettings(cache_reference_pass=False), with_people),
                                           levers(contract.SpeedSettings(), with_people))
    three_people = ([[[context, people_extra]] for context in three[0]], *three[1:])

    def step(patcher, contexts, strengths, timestep):
        return lambda: evaluate_conditions(patcher, x, timestep, contexts, strengths, mask)

    def reference_pass(person=0, patcher=with_refs):
        def go():
            comfy.model_management.load_models_gpu([patcher])
            settings = contract.get_settings(patcher.model_options)
            compute_dtype = model.manual_cast_dtype or model.get_dtype()
            compute_reference_features(model, settings.people[person].references, settings.reference_context, torch.tensor([500.0]),
                                       device, compute_dtype)
        return go

    def run(patcher, first_run):
        def go():
            if first_run:
                cache.clear()
            sample(patcher, [[positive, {}]], [[negative, {}]], {"samples": torch.zeros_like(x)}, 0, args.steps, "euler",
                   "trailing", 1.0, guidance, noise=x)
        return go

    steps = {
        "plain_eval_s": step(plain, [positive], [0.0], 500),
        "plain_cfg_s": step(plain, [positive, negative], [0.0, 0.0], 500),
        "ref_pass_s": reference_pass(),
        "ff2_base_s": step(base, *two),
        "ff2_s": step(first, *two),
        "ff2_cached_s": step(repeat, *two),
        "ff3_base_s": step(base, *three),
        "ff3_s": step(first, *three),
        "ff3_cached_s": step(repeat, *three),
        "ref_pass_second_s": reference_pass(1, with_people),
        "ff3_two_people_s": step(two_people_first, *three_people),
        "ff3_two_people_cached_s": step(two_people_repeat, *three_people),
    }
    if args.official:
        # The demo runs the float32 official model under autocast on CUDA; elsewhere in float32.
        autocast = dtype if device.type == "cuda" and dtype != torch.float32 else None
        official = OfficialStep(official_unet, model.process_latent_in(references.model_latents()), negative, mask, args.batch, autocast)
        steps["official_ff2_s"] = lambda: official(x, [positive, negative], 0.85, 900)
        steps["official_ff3_s"] = lambda: official(x, [positive, positive, negative], 1.2, 500)
    no_prefetch = levers(contract.SpeedSettings(prefetch_reference_pass=False))
    runs = {"run_base_s": run(base, False), "run_no_prefetch_s": run(no_prefetch, True), "run_s": run(repeat, True),
            "run_cached_s": run(repeat, False)} if args.steps else {}
    compile_seconds = {}
    if args.compile:
        from comfy_api.torch_helpers import set_torch_compile_wrapper

        def compiled(patcher):
            patched = patcher.clone()
            set_torch_compile_wrapper(model=patched, backend=args.compile)  # what TorchCompileModel does
            return patched

        plain_compiled, first_compiled, repeat_compiled = compiled(plain), compiled(first), compiled(repeat)
        compiled_steps = {
            "plain_cfg_compiled_s": step(plain_compiled, [positive, negative], [0.0, 0.0], 500),
            "ff2_compiled_s": step(first_compiled, *two), "ff3_compiled_s": step(first_compiled, *three),
            "ff2_cached_compiled_s": step(repeat_compiled, *two), "ff3_cached_compiled_s": step(repeat_compiled, *three),
        }
        steps.update(compiled_steps)
        if args.steps:
            runs["run_compiled_s"] = run(repeat_compiled, True)
            runs["run_cached_compiled_s"] = run(repeat_compiled, False)
    labels = {
        "plain_eval_s": "plain SD1.5 evaluation (1 condition)", "plain_cfg_s": "plain SD1.5 CFG step (2 conditions)",
        "ref_pass_s": "reference pass alone", "ff2_base_s": "FlashFace 2-evaluation step, levers off",
        "ff2_s": "FlashFace 2-evaluation step, levers on", "ff2_cached_s": "FlashFace 2-evaluation step, repeat run (cached)",
        "ff3_base_s": "FlashFace 3-evaluation step, levers off", "ff3_s": "FlashFace 3-evaluation step, levers on",
        "ff3_cached_s": "FlashFace 3-evaluation step, repeat run (cached)",
        "ref_pass_second_s": "second person's reference pass alone", "ff3_two_people_s": "two people, 3-evaluation step, levers on",
        "ff3_two_people_cached_s": "two people, 3-evaluation step, repeat run",
        "official_ff2_s": "official FlashFace U-Net, 2-condition step", "official_ff3_s": "official FlashFace U-Net, 3-condition step",
        "run_base_s": f"{args.steps}-step FlashFace run, levers off",
        "run_no_prefetch_s": f"{args.steps}-step FlashFace run, first run, no prefetch",
        "run_s": f"{args.steps}-step FlashFace run, first run", "run_cached_s": f"{args.steps}-step FlashFace run, repeat run",
        "plain_cfg_compiled_s": "plain SD1.5 CFG step, compiled",
        "ff2_compiled_s": "FlashFace 2-evaluation step, levers on, compiled",
        "ff3_compiled_s": "FlashFace 3-evaluation step, levers on, compiled",
        "ff2_cached_compiled_s": "FlashFace 2-evaluation step, repeat run, compiled",
        "ff3_cached_compiled_s": "FlashFace 3-evaluation step, repeat run, compiled",
        "run_compiled_s": f"{args.steps}-step FlashFace run, first run, compiled",
        "run_cached_compiled_s": f"{args.steps}-step FlashFace run, repeat run, compiled",
    }
    if args.each_lever:
        for lever in ("share_encoder", "merged_attention"):
            alone = levers(contract.SpeedSettings(cache_reference_pass=False, share_encoder=lever == "share_encoder",
                                                  merged_attention=lever == "merged_attention"))
            for rows, setup in (("ff2", two), ("ff3", three)):
                steps[f"{rows}_{lever}_s"] = step(alone, *setup)
                labels[f"{rows}_{lever}_s"] = f"FlashFace {rows[-1]}-evaluation step, {lever} alone"
    variants = {**steps, **runs}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    seconds = {name: [] for name in variants}
    cpu_seconds = {name: [] for name in variants}
    peaks = {name: 0.0 for name in variants}

    def timed(name):
        with PeakMemory(device) as peak:
            sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            variants[name]()
            sync()
            seconds[name].append(time.perf_counter() - start)
            cpu_seconds[name].append(time.process_time() - cpu_start)
        peaks[name] = max(peaks[name], peak.mb)
        print(f"{name} {seconds[name][-1]:.3f} s", file=sys.stderr, flush=True)

    if args.flops:
        return count_flops(steps, labels)

    agreement = {}
    if args.official:
        # Exact float32 for the comparison: no TF32 convolutions (PyTorch's default on NVIDIA GPUs).
        saved_tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        with torch.inference_mode():
            # The official order and strengths: both rows at the similarity, or only the first.
            for name, contexts, strengths, timestep in (
                ("ff2", [positive, negative], [0.85, 0.85], 900),
                ("ff3", [positive, positive, negative], [1.2, 0.0, 0.0], 500),
            ):
                ours = evaluate_conditions(first, x, timestep, contexts, strengths, mask)
                agreement[name] = relative_difference(ours, official(x, contexts, strengths[0], timestep))
        torch.backends.cudnn.allow_tf32 = saved_tf32
        print("pack vs official U-Net on the same weights, relative difference: "
              + ", ".join(f"{k} {v:.2e}" for k, v in agreement.items()))
        bar = 1e-4 if dtype == torch.float32 and official_attention(device) != "flash_attn" else 1e-2
        if max(agreement.values()) > bar:
            raise SystemExit(f"The pack and the official U-Net disagree beyond {bar:g}: timing them side by side would mean nothing.")

    with torch.inference_mode():
        # Warm-up: load the model, and fill the cache at the timesteps of the repeat-run steps.
        for name in ("plain_eval_s", "ff2_cached_s", "ff3_cached_s"):
            steps[name]()
        cache_mb = cache.nbytes / 2**20 / cache.timesteps  # one person's
        steps["ff3_two_people_cached_s"]()
        # Compiled variants: their first calls compile (timed apart); every shape the rounds see is compiled here.
        for name in [n for n in variants if "compiled" in n]:
            sync()
            start = time.perf_counter()
            variants[name]()
            sync()
            compile_seconds[name] = round(time.perf_counter() - start, 3)
            print(f"{name} first call (compiles) {compile_seconds[name]:.3f} s", file=sys.stderr, flush=True)
        for group, repeats in ((steps, args.repeats), (runs, args.run_repeats)):
            for _ in range(repeats):  # interleaved: every variant once per round
                for name in group:
                    timed(name)

    medians = {name: statistics.median(values) for name, values in seconds.items()}
    baseline = medians["plain_cfg_s"]
    attention = comfy.ldm.modules.attention.optimized_attention.__name__
    print(f"device {device}, dtype {dtype}, {args.size}x{args.size}, batch {args.batch}, {args.refs} references, "
          f"attention {attention}, torch threads {torch.get_num_threads()}, median of {args.repeats}; "
          f"the reference-pass cache keeps {cache_mb:.1f} MB per timestep")
    print(f"{'variant':52} {'seconds':>9} {'x plain CFG':>12} {'peak MB':>9}")
    for name, value in medians.items():
        print(f"{labels[name]:52} {value:9.3f} {value / baseline:12.3f} {peaks[name]:9.0f}")
    result = {name: round(value, 4) for name, value in medians.items()}
    result.update({name[:-2] + "_ratio": round(value / baseline, 3) for name, value in medians.items()})
    result.update({
        "peak_mb": {name: round(value) for name, value in peaks.items()}, "attention": attention, "device": str(device),
        "dtype": str(dtype), "channels": args.channels, "size": args.size, "batch": args.batch, "refs": args.refs, "repeats": args.repeats,
        "steps": args.steps, "threads": torch.get_num_threads(), "cache_mb_per_timestep": round(cache_mb, 1),
        "all_seconds": {k: [round(s, 3) for s in v] for k, v in seconds.items()},
        "cpu_seconds": {k: round(statistics.median(v), 3) for k, v in cpu_seconds.items()},
    })
    # The bound: two people cost at most 1.15x one person plus the second reference pass.
    bound = 1.15 * medians["ff3_s"] + medians["ref_pass_second_s"]
    result["two_people_bound_ratio"] = round(medians["ff3_two_people_s"] / bound, 3)
    result["two_people_cached_vs_one_ratio"] = round(medians["ff3_two_people_cached_s"] / medians["ff3_cached_s"], 3)
    print(f"two people vs 1.15 x one person + the second reference pass: {result['two_people_bound_ratio']:.3f} (at most 1); "
          f"repeat runs, two people vs one: {result['two_people_cached_vs_one_ratio']:.3f}")
    if args.steps:
        # Per step of the runs: what a user's first and repeat runs cost.
        for name in [n for n in medians if n.startswith("run_")]:
            result[name[:-2] + "_step_ratio"] = round(medians[name] / args.steps / baseline, 3)
        result["prefetch_vs_no_prefetch_ratio"] = round(medians["run_s"] / medians["run_no_prefetch_s"], 3)
        print(f"first run with the prefetched reference pass vs without: {result['prefetch_vs_no_prefetch_ratio']:.3f}")
    if compile_seconds:
        result["compile_s"] = compile_seconds
        result["compile_backend"] = args.compile
        result["ff3_compiled_vs_plain_cfg_compiled_ratio"] = round(medians["ff3_compiled_s"] / medians["plain_cfg_compiled_s"], 3)
    if agreement:
        result["official_relative_difference"] = {k: float(f"{v:.3g}") for k, v in agreement.items()}
        result["official_attention"] = official_attention(device)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
