#!/usr/bin/env bash
# A new user's first hour with byola, scripted (run by hand): fresh clone, fresh virtual environment, then every
# command as the README and `--help` present them, and one deliberate mistake per command. Prints each step, its
# output (last lines), wall time and exit code, then a summary table. Nothing here touches the internet: the
# "model by name" step downloads from a loopback HTTP server (127.0.0.1) serving a generated weight file.
#
# usage: benchmarks/first_hour.sh [--fresh] [--full] [--keep] [REPO]
#   REPO     the repository to clone (default: this checkout; the clone takes its current branch)
#   --fresh  install into a new venv from PyPI: `pip install -e .` (about 4 minutes and 6 GB with CUDA torch).
#            Default: hardlink-copy /work/main/.venv (the project's development venv, as /work/mkwt.sh does) and
#            reinstall byola editable from the clone, to spare the machine the download.
#   --full   evaluate the whole fsdd_digit task (3,000 clips; default: every 5th clip, as a CSV task)
#   --keep   keep the work folder (default: deleted at the end)
# Environment: DATA (default ../shared/data relative to REPO, then /work/shared/data) for the evaluation and
# pretraining corpora; the steps needing it are skipped when absent.
set -uo pipefail

fresh=0; full=0; keep=0; repo=""
for arg in "$@"; do
  case "$arg" in
    --fresh) fresh=1 ;;
    --full) full=1 ;;
    --keep) keep=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) repo=$arg ;;
  esac
done
repo=$(cd "${repo:-$(dirname "$0")/..}" && pwd)
DATA=${DATA:-$repo/../shared/data}
[ -d "$DATA" ] || DATA=/work/shared/data
W=$(mktemp -d /tmp/byola_first_hour.XXXXXX)
export BYOLA_CACHE=$W/cache OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
unset BYOLA_DEBUG BYOLA_ACCEPT_LICENSE
summary=()
n=0

# step EXPECTED_RC "TITLE" COMMAND...: run in the clone, print the last output lines, wall time and exit code.
step() {
  local expected=$1 title=$2; shift 2
  n=$((n + 1))
  printf '\n== [%02d] %s\n$ %s\n' "$n" "$title" "$*"
  local t0=$(date +%s%N)
  (cd "$W/byola" 2>/dev/null; "$@") > "$W/step.log" 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  local dt=$(printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)))
  tr '\r' '\n' < "$W/step.log" | grep -v '^\s*$' | tail -n "${LINES_SHOWN:-12}" | sed 's/^/  | /'
  local verdict=ok; [ "$rc" = "$expected" ] || verdict="UNEXPECTED (wanted $expected)"
  printf -- '-> exit %s, %ss, %s\n' "$rc" "$dt" "$verdict"
  summary+=("$(printf '%02d  %-58s %4s %8s  %s' "$n" "${title:0:58}" "$rc" "$dt" "$verdict")")
}

install() {
  git clone -q "$repo" "$W/byola" || return 1
  cd "$W/byola"
  if [ "$fresh" = 1 ]; then
    python3 -m venv .venv && .venv/bin/pip install -q -e . || return 1
  else
    cp -al /work/main/.venv .venv || return 1
    local sp=.venv/lib/python3.11/site-packages f s
    # byola's own install records are per checkout: unlink them before reinstalling from the clone.
    for f in $sp/__editable__*byola* $sp/byola-*.dist-info/* $sp/__pycache__/__editable___byola*; do
      [ -e "$f" ] && cp --remove-destination "$f" "$f.tmp$$" && mv "$f.tmp$$" "$f"; done
    for s in .venv/bin/*; do
      if [ -f "$s" ] && [ ! -L "$s" ] && head -c 200 "$s" | grep -q /work/main/.venv; then
        sed "s|/work/main/.venv|$W/byola/.venv|g" "$s" > "$s.new"; chmod +x "$s.new"; mv "$s.new" "$s"; fi
    done
    .venv/bin/pip install -q -e . --no-deps --no-build-isolation 2>&1 | grep -v WARNING
  fi
  .venv/bin/python -c "import byola, sys; assert byola.__file__.startswith('$W/byola'); print('byola', byola.__version__, 'from', byola.__file__)"
}

echo "first hour: clone of $repo in $W (venv: $([ $fresh = 1 ] && echo 'fresh from PyPI' || echo 'hardlinked from /work/main/.venv')), data: $DATA"
step 0 "install (clone + venv + pip install -e .)" install
export PATH=$W/byola/.venv/bin:$PATH

# -- discover -------------------------------------------------------------------------------------------------
step 0 "byola --help" byola --help
for c in embed pretrain evaluate plot models convert stats prepare; do
  LINES_SHOWN=4 step 0 "byola $c --help" byola "$c" --help
done
LINES_SHOWN=40 step 0 "byola models" byola models

# -- embed ----------------------------------------------------------------------------------------------------
step 0 "embed the examples with the shipped model" byola embed examples/ --out "$W/emb"
if [ -d "$DATA/fsdd/audio" ]; then
  mkdir -p "$W/clips/george" "$W/clips/jackson"
  cp "$DATA"/fsdd/audio/[0-4]_george_1*.wav "$W/clips/george/" && cp "$DATA"/fsdd/audio/[5-9]_jackson_1*.wav "$W/clips/jackson/"
  step 0 "embed a folder (nested, $(find "$W/clips" -name '*.wav' | wc -l) clips) with --frames" \
    byola embed "$W/clips" --frames --out "$W/emb_frames"
  step 0 "rerun the same job: nothing to redo" byola embed "$W/clips" --frames --out "$W/emb_frames"
  step 0 "the same folder with frames every 160 ms (--frame_hop_ms: 2 model frames pooled)" \
    byola embed "$W/clips" --frames --frame_hop_ms 160 --out "$W/emb_frames160"
fi

# -- a model by name from a loopback server -------------------------------------------------------------------
mkdir -p "$W/server" "$BYOLA_CACHE"
"$W/byola/.venv/bin/python" - "$W" <<'EOF'
# A weight file in the official BYOL-A layout (random values, official key names), and a models.json entry for it.
import hashlib, importlib.util, json, sys
from pathlib import Path
import torch
w = Path(sys.argv[1])
spec = importlib.util.spec_from_file_location("t", w / "byola/tests/test_checkpoint.py")
t = importlib.util.module_from_spec(spec); spec.loader.exec_module(t)
torch.save(t.official_state(1, 512), w / "server/lab-v1-d512.pth")
data = (w / "server/lab-v1-d512.pth").read_bytes()
port = 8765
(w / "cache/models.json").write_text(json.dumps([{
    "name": "lab-v1-d512", "url": f"http://127.0.0.1:{port}/lab-v1-d512.pth", "sha256": hashlib.sha256(data).hexdigest(),
    "description": "a lab's model served on the loopback", "architecture": "AudioNTT2020 d=512",
    "licence": "lab evaluation licence", "licence_url": "http://127.0.0.1/licence", "needs_acceptance": True}]))
EOF
port=8765
(cd "$W/server" && exec python3 -m http.server "$port" --bind 127.0.0.1 > "$W/server.log" 2>&1) &
server_pid=$!
sleep 1
step 2 "embed with a model by name, licence not yet accepted" byola embed examples/ --model lab-v1-d512 --out "$W/emb_lab"
step 0 "the same with --accept_license (downloads, verifies, converts in memory)" \
  byola embed examples/ --model lab-v1-d512 --accept_license --out "$W/emb_lab"
step 0 "embed with it again (cached, no licence flag)" byola embed examples/ --model lab-v1-d512 --out "$W/emb_lab2"
step 0 "embed with an official .pth file directly (--checkpoint)" \
  byola embed examples/ --checkpoint "$W/server/lab-v1-d512.pth" --out "$W/emb_pth"
kill "$server_pid"
step 2 "official weights without network (BYOLA_ACCEPT_LICENSE=1)" \
  env BYOLA_ACCEPT_LICENSE=1 byola embed examples/ --model byol-a-v1-d512 --out "$W/emb_official"

# -- evaluate -------------------------------------------------------------------------------------------------
if [ -f "$DATA/fsdd/fsdd_digit.csv" ]; then
  if [ "$full" = 1 ]; then task=(fsdd_digit --data_root "$DATA"); else
    # every 5th clip of fsdd_digit (600 of 3,000; same splits), paths absolute: a CSV task as a user writes one
    awk -F, -v d="$DATA/fsdd" 'NR == 1 || NR % 5 == 2 { if (NR > 1) $1 = d "/" $1; print }' OFS=, \
      "$DATA/fsdd/fsdd_digit.csv" > "$W/fsdd_digit_600.csv"
    task=("$W/fsdd_digit_600.csv" --unit_sec 1.0); fi
  LINES_SHOWN=16 step 0 "evaluate ${task[0]##*/} with baselines (one probe seed)" \
    byola evaluate "${task[@]}" --baselines --seeds 1 --out "$W/eval"
  step 0 "byola plot EVAL (redraw scores.png and confusion matrices)" byola plot "$W/eval"
fi

# -- pretrain -------------------------------------------------------------------------------------------------
if [ -d "$W/clips" ]; then
  step 0 "pretrain 20 steps (byola_v1 recipe, batch 16)" byola pretrain "$W/clips" --recipe byola_v1 \
    --out "$W/run" --train.steps=20 --train.batch_size=16 --data.num_workers=1 --train.progress=false
  step 0 "byola plot RUN" byola plot "$W/run"
  step 0 "embed with the new model" byola embed examples/ --checkpoint "$W/run/model.safetensors" --out "$W/emb_run"
  # TensorBoard is an extra (`pip install 'byola[tensorboard]'`): without it, the option is refused in one line.
  tb=(byola pretrain "$W/clips" --recipe byola_v1 --out "$W/run" --resume --train.steps=25 --train.batch_size=16
      --data.num_workers=1 --train.progress=false --train.tensorboard=true)
  if "$W/byola/.venv/bin/python" -c "import tensorboard" 2>/dev/null; then
    step 0 "extend the run by 5 steps with TensorBoard logging (RUN/tensorboard)" "${tb[@]}"
    step 0 "the TensorBoard event files" find "$W/run/tensorboard" -type f
  else
    step 2 "TensorBoard logging without the tensorboard extra installed" "${tb[@]}"
  fi
fi

# -- one mistake per command ----------------------------------------------------------------------------------
step 2 "mistake: embed, misspelt option" byola embed examples/ --out "$W/m1" --checkpiont my.safetensors
step 2 "mistake: embed, bad option value" byola embed examples/ --batch_size many
step 2 "mistake: embed, --device cuda without a GPU" byola embed examples/ --device cuda
step 2 "mistake: embed, unknown model name" byola embed examples/ --model byol-a-v1-d51
step 2 "mistake: embed, a frame hop that is not a multiple of the model's" byola embed examples/ --frames --frame_hop_ms 100
step 2 "mistake: pretrain, misspelt recipe key" byola pretrain examples/ --optim.lrr=1e-4
step 2 "mistake: pretrain, misspelt option" byola pretrain examples/ --resum
step 2 "mistake: evaluate, unknown task" byola evaluate fsdd_digits --data_root "$DATA"
step 2 "mistake: plot, not a run folder" byola plot examples/
step 2 "mistake: models, stray argument" byola models all
step 2 "mistake: convert, missing file" byola convert AudioNTT2020-BYOLA-64x96d512.pth out.safetensors
step 2 "mistake: stats, missing input" byola stats nothere/
step 2 "mistake: prepare, unknown dataset" byola prepare esc51 /tmp "$W/prep"
step 1 "mistake with --debug: the traceback" byola convert nothere.pth out.safetensors --debug

printf '\n== summary (%s)\n%-4s%-58s %4s %8s  %s\n' "$(date -u +%FT%TZ)" "#" "step" "exit" "wall s" "verdict"
printf '%s\n' "${summary[@]}"
[ "$keep" = 1 ] && echo "work folder kept: $W" || rm -rf "$W"
