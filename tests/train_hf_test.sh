#!/usr/bin/env bash
# CTest train.hf: barbell-train with GPT-2's BPE (--tokenizer: text -> ids, written as an llm.c shard that a
# later run reads), writing a Hugging Face folder (--export-hf) and starting from one (--init-from), and the
# flag combinations it must refuse.
# Usage: train_hf_test.sh BARBELL_TRAIN TOKENIZER_DIR TEXT WORKDIR
set -euo pipefail
train=$1
tok=$2
text=$3
work=$4
rm -rf "$work"
mkdir -p "$work"

fail() {
  echo "FAIL: $*" >&2
  exit 1
}
common=(--preset tiny --batch 8 --eval-every 0 --log-every 5 --samples 1 --seed 11)
run_ok() {
  local log=$1
  shift
  "$train" "${common[@]}" --seq-len 32 "$@" > "$work/$log" 2>&1 || { cat "$work/$log"; fail "barbell-train $* failed"; }
}
# Without --seq-len 32 unless given.
run_fails() {
  local log=$1 want=$2
  shift 2
  if "$train" "${common[@]}" "$@" > "$work/$log" 2>&1; then
    cat "$work/$log"
    fail "barbell-train $* exited 0"
  fi
  grep -Eq -- "$want" "$work/$log" || { cat "$work/$log"; fail "$log does not match '$want'"; }
}
# The value of KEY on the first line of a metrics.jsonl that has it (full precision).
first_value() { grep -o "\"$1\":[^,}]*" "$2" | head -n 1 | cut -d: -f2; }
last_value() { grep -o "\"$1\":[^,}]*" "$2" | tail -n 1 | cut -d: -f2; }

echo "== text through GPT-2 BPE, exported as a Hugging Face folder"
run_ok a.log --data "$text" --tokenizer "$tok" --steps 20 --out "$work/a" --export-hf "$work/hf"
grep -Eq "^tokenizer: .* -> [0-9]+ tokens .* written to $work/a/tokens.bin" "$work/a.log" || { cat "$work/a.log"; fail "no shard line"; }
grep -q "vocabulary 1500" "$work/a.log" || { cat "$work/a.log"; fail "the vocabulary is not the tokenizer's"; }
for f in config.json model.safetensors vocab.json merges.txt; do
  [ -s "$work/hf/$f" ] || fail "--export-hf did not write $f"
done
grep -q '"model_type": "gpt2"' "$work/hf/config.json" || fail "config.json is not GPT-2's"
grep -q '"eos_token_id": 0' "$work/hf/config.json" || fail "eos_token_id is not the tokenizer's <|endoftext|>"

echo "== the shard it wrote trains on the same ids"
run_ok b.log --data "$work/a/tokens.bin" --tokenizer "$tok" --steps 5 --out "$work/b"
la=$(first_value loss "$work/a/metrics.jsonl")
lb=$(first_value loss "$work/b/metrics.jsonl")
[ "$la" = "$lb" ] || fail "step 1 loss from the text ($la) and from its shard ($lb) differ"

echo "== --init-from the exported folder: the same model (learning rate 0 leaves it as it was)"
run_ok c.log --data "$text" --tokenizer "$tok" --init-from "$work/hf" --steps 1 --lr 0 --min-lr 0 --out "$work/c"
va=$(last_value val_loss "$work/a/metrics.jsonl")
vc=$(last_value val_loss "$work/c/metrics.jsonl")
[ "$va" = "$vc" ] || fail "validation loss of the exported model ($va) and of --init-from it ($vc) differ"
echo "validation loss $va before the export and after --init-from"
run_ok d.log --data "$text" --tokenizer "$tok" --init-from "$work/hf" --steps 10 --out "$work/d"
d1=$(first_value loss "$work/d/metrics.jsonl")
d10=$(last_value loss "$work/d/metrics.jsonl")
awk -v a="$d1" -v b="$d10" 'BEGIN { exit !(b < a) }' || fail "--init-from did not train: loss $d1 -> $d10"

echo "== refused"
run_fails e1.log "--tokenizer .* needs --data" --tokenizer "$tok" --steps 1 --out "$work/e1"
run_fails e2.log "--n-embd 32 contradicts --init-from" --data "$text" --tokenizer "$tok" --init-from "$work/hf" \
  --seq-len 32 --n-embd 32 --steps 1 --out "$work/e2"
run_fails e3.log "--seq-len 100 is longer than --init-from .* n_positions 32" --data "$text" --tokenizer "$tok" \
  --init-from "$work/hf" --seq-len 100 --steps 1 --out "$work/e3"
run_fails e4.log "vocab.json: cannot open" --data "$text" --tokenizer "$work/nowhere" --steps 1 --out "$work/e4"
run_fails e5.log "config.json: cannot open" --data "$text" --init-from "$work/nowhere" --steps 1 --out "$work/e5"

"$train" --help > "$work/help.log" 2>&1 || fail "--help exited non-zero"
for flag in --init-from --export-hf --tokenizer; do
  grep -q -- "$flag" "$work/help.log" || { cat "$work/help.log"; fail "--help does not list $flag"; }
done
echo "train.hf: OK"
