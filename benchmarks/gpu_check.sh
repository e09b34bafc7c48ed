#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one go (a machine with a CUDA GPU is lent rarely and briefly: one call).
#
#   bash benchmarks/gpu_check.sh --prepare   # here, with network: wheels of byola's needs the GPU image lacks -> .whl/
#   bash benchmarks/gpu_check.sh             # there, from the repository root; figures in $OUT (default gpu_out/)
#
# It prints (and keeps in $OUT): nvidia-smi; benchmarks/pretrain_speed.py on the GPU (data, augmentation and model
# step split, eager / channels_last / bf16 / compile variants, both log-mel backends on the device); `byola embed`
# of N generated 1-s clips on the GPU in fp32 and in bf16 (whole process, clips/s, and the minimum cosine
# similarity between the two outputs). DEVICE=cpu N=64 STEPS=2 BATCH=16 FILES=32 runs the same on a CPU, as a check of the script.
set -euo pipefail
WHEELS=(nnAudio==0.3.4 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 fire==0.7.1 termcolor==3.3.0)  # as tested here
if [ "${1:-}" = "--prepare" ]; then  # the GPU image has torch, torchaudio, numpy, scikit-learn...; not these
  exclude=$(git rev-parse --git-path info/exclude)  # .whl/ travels to the GPU machine untracked, never committed
  grep -qx '/.whl/' "$exclude" 2>/dev/null || echo /.whl/ >> "$exclude"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "${WHEELS[@]}"
  ls .whl
  exit 0
fi
DEVICE=${DEVICE:-cuda} N=${N:-4096} STEPS=${STEPS:-12} BATCH=${BATCH:-256} FILES=${FILES:-512} OUT=${OUT:-gpu_out} PY=${PY:-python3}
mkdir -p "$OUT"
if ! $PY -c "import soundfile, nnAudio, fire" 2>/dev/null; then
  [ -d .whl ] || { echo "missing soundfile/nnAudio/fire and no .whl/: run '$0 --prepare' where pip can download"; exit 2; }
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/byola_site .whl/*.whl
  export PYTHONPATH=/tmp/byola_site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi || echo "no nvidia-smi"; } 2>&1 | tee "$OUT/nvidia-smi.txt"

$PY benchmarks/pretrain_speed.py --device "$DEVICE" --steps "$STEPS" --batch "$BATCH" --files "$FILES" 2>&1 | tee "$OUT/pretrain_speed.txt"

$PY - "$DEVICE" "$N" "$OUT" <<'EOF' 2>&1 | tee "$OUT/embed_gpu.txt"
"""`byola embed` of N generated 1-s clips on DEVICE, fp32 vs bf16, whole processes (statistics given)."""
import subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np, soundfile as sf, torch
from byola.checkpoint import save_checkpoint
from byola.frontend import LogMelSpectrogram
from byola.models import build_encoder
from byola.norm import NormStats

device, n, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
tmp = Path(tempfile.mkdtemp(prefix="byola_gpu_"))
rng = np.random.default_rng(0)
for i in range(n):
    sf.write(tmp / f"{i:05d}.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
print(f"{n} generated 1-s clips; torch {torch.__version__}; device {device}"
      + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""))
for name, d in (("AudioNTT2020", 512), ("AudioNTT2022", 2048)):
    ckpt = tmp / f"{name}.safetensors"
    torch.manual_seed(0)
    save_checkpoint(ckpt, build_encoder(name, d=d).eval(), LogMelSpectrogram().config(), NormStats(-6.0, 5.0, 1),
                    {"source": "gpu_check"})
    rows = {}
    for precision in ("fp32", "bf16"):
        dst = tmp / f"out_{name}_{precision}"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "byola", "embed", str(tmp), "--checkpoint", str(ckpt), "--out", str(dst),
                        "--device", device, "--precision", precision, "--progress", "False"], check=True)
        wall = time.perf_counter() - t0
        rows[precision] = np.load(dst / "embeddings.npy")
        print(f"{name} d={d} {precision}: {wall:.1f} s whole process = {n / wall:.0f} clips/s")
    a, b = (torch.from_numpy(rows[p]) for p in ("fp32", "bf16"))
    print(f"{name} d={d}: bf16 / fp32 min cosine similarity {torch.nn.functional.cosine_similarity(a, b).min():.6f}")
EOF
echo "figures in $OUT"
