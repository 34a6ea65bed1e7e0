# lmm — the commands a newcomer types. Every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LMM := $(VENV)/bin/lmm
STAMP := $(VENV)/.installed
LMMS_EVAL_STAMP := $(VENV)/.installed-lmms-eval

# torch and torchvision must be pinned in the same pip command as everything else:
# PyPI's torchvision imports only beside its matching torch, and an unpinned install
# swaps torch for a multi-GB download. The matching pair depends on the architecture.
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_PINS := torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
endif

.PHONY: lint format test-fast install install-lmms-eval data pretrain-tiny demo test describe lock clean-runs help convert bench-data bench-eval bench-train-step bench-packing bench-straggler bench-data-scale bench-loss bench-mfu bench ablate table table2 ablate-anyres ablate-multi-image gpu-check simulate scale-out design-space

help:
	@echo "make demo      install, generate synthetic shards, pretrain, finetune, evaluate, print metrics"
	@echo "make test      install (with the lmms-eval extra) and run the test suite"
	@echo "make test-fast the suite without subprocess trainings, SLURM and lmms-eval (the inner loop, a few minutes)"
	@echo "make lint      ruff: the formatter's check and the linter (make format fixes what it can)"
	@echo "make install   create .venv and install lmm (every target runs it first)"
	@echo "make install-lmms-eval   add lmms-eval 0.7.3 (lmms-eval --model lmm ...) to .venv"
	@echo "make data      generate the synthetic shards under data/synthetic"
	@echo "make pretrain-tiny  rebuild pretrained/tiny/: the tiny CLIP-style tower and chat LLM"
	@echo "make table2    LLaVA-1.5's Table 2 in miniature (6 recipe steps x 3 seeds, ~21 min on 2 cores) in experiments/results/table2"
	@echo "make design-space  connector type x token budget x resolution x 3 seeds with blind controls (~20 min) in experiments/results/design_space"
	@echo "make ablate-anyres       pad vs AnyRes on small text (2 rows x 3 seeds) in experiments/results/anyres"
	@echo "make ablate-multi-image  single- vs multi-image training on two-image questions (2 rows x 3 seeds) in experiments/results/multi_image"
	@echo "make describe  parameter table of LLaVA-1.5-13B (meta device, no download)"
	@echo "make simulate  LLaVA-1.5-13B finetune on 8 fake GPUs: memory per rank, collectives, step time 8-512 GPUs"
	@echo "make scale-out regenerate docs/scale_out/ (7B and 13B, both stages) from task=simulate"
	@echo "make convert JSON=... IMAGES=... NAME=...   LLaVA JSON + image folders -> data/shards/NAME"
	@echo "make bench     every CPU benchmark below, side by side ratios in experiments/bench/"
	@echo "make bench-data   streaming pipeline vs a LLaVA-style map-style loader (samples/s)"
	@echo "make bench-eval   batched generation vs the batch-1 loop (answers/s)"
	@echo "make bench-train-step  lmm's training step vs a bare loop over HF Llava (tokens/s)"
	@echo "make bench-packing     packed rows vs LLaVA's grouped padded batches (real tokens/s, waste)"
	@echo "make bench-straggler   slowest rank / mean tokens per step: per-rank batch plans vs the global plan (8 ranks)"
	@echo "make bench-data-scale  bytes a rank reads per byte it trains on, at 8/64/512 ranks: shard indexes vs the raw stream"
	@echo "make bench-loss   peak memory and time of a step: the fused loss vs full logits (Qwen2's and Vicuna's vocabularies)"
	@echo "make bench-mfu    (GPU) MFU under FSDP2 bf16, with/without checkpointing and compile"
	@echo "make gpu-check    (GPU) FSDP recipe with text-only steps, LoRA under FSDP, packing, MFU, fused loss: one PASS/FAIL line each"
	@echo "make table SWEEP=experiments/runs/NAME   ablation table (md/tex/csv/png) of a sweep"
	@echo "make clean-runs  delete experiments/runs"
	@echo "make lock      rewrite requirements.lock from the current environment"

install: $(STAMP)

# Re-runs only when the declared dependencies change; otherwise a no-op. requirements.lock is a
# constraints file (-c): it pins versions without installing what an install does not need.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c requirements.lock $(TORCH_PINS) -e '.[dev,loggers]'
	touch $(STAMP)

# The lmms-eval extra (lmms-eval --model lmm ...), pinned by the same lock; make test uses it.
install-lmms-eval: $(LMMS_EVAL_STAMP)

$(LMMS_EVAL_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -c requirements.lock $(TORCH_PINS) -e '.[dev,loggers,lmms-eval]'
	touch $(LMMS_EVAL_STAMP)

# DATA_DIR and ARGS (sizes: --train N ...; lmm synthetic --help) for a mixture elsewhere.
DATA_DIR ?= data/synthetic
data: install
	$(LMM) synthetic --out $(DATA_DIR) $(ARGS)

# The tiny pretrained tower (CLIP-style) and LLM shipped in pretrained/tiny/ (vision=tiny_pretrained,
# llm=tiny_pretrained); deterministic on one machine. pretrained/tiny/pretrain.json says how it went.
pretrain-tiny: install
	$(LMM) pretrain-tiny --out pretrained/tiny

# Pretrain (connector only) -> finetune (connector + LLM, connector initialised from the
# pretrain run) -> greedy evaluation on the test split. Re-running resumes/skips finished runs.
demo: install data
	$(LMM) train experiment=demo_pretrain
	$(LMM) train experiment=demo_finetune

# LLaVA-format JSON + image root -> WebDataset shards, one folder per source (resumable).
convert: install
	@test -n "$(JSON)" -a -n "$(IMAGES)" -a -n "$(NAME)" || { echo "usage: make convert JSON=file.json IMAGES=/image/root NAME=llava_mix665k"; exit 2; }
	$(LMM) convert --json $(JSON) --images $(IMAGES) --out data/shards/$(NAME)

bench-data: install
	$(LMM) bench data $(ARGS)

bench-eval: install
	$(LMM) bench eval $(ARGS)

bench-train-step: install
	$(LMM) bench train-step $(ARGS)

bench-packing: install
	$(LMM) bench packing $(ARGS)

bench-straggler: install
	$(LMM) bench straggler $(ARGS)

bench-data-scale: install
	$(LMM) bench data-scale $(ARGS)

bench-loss: install
	$(LMM) bench loss $(ARGS)

# GPU only: MFU under FSDP2 + bf16, with/without activation checkpointing and torch.compile.
bench-mfu: install
	$(LMM) bench mfu $(ARGS)

# GPU only: the FSDP recipe, LoRA under FSDP, packing with the varlen kernel, and bench-mfu (a few minutes on one H100).
gpu-check: install
	$(LMM) gpu-check $(ARGS)

# Every CPU benchmark; each prints ratios measured side by side and writes experiments/bench/<name>.json.
bench: bench-data bench-eval bench-train-step bench-packing bench-straggler bench-data-scale bench-loss

# Ablation table of a sweep: Markdown, LaTeX, CSV and PNG next to it.
# The connector ablation (4 connectors × 3 seeds on the embedded default), then its table and
# plots in experiments/results/ablate_connectors/. Re-running resumes/skips finished runs.
ablate: install data
	$(LMM) train -m experiment=ablate_connectors trainer.enable_progress_bar=false
	$(LMM) ablate experiments/runs/ablate_connectors --out experiments/results/ablate_connectors \
		--metrics synthetic/vqa/exact_match,synthetic/ocr/exact_match,synthetic/region/caption_exact_match,synthetic/region/grounding_acc_iou50,synthetic/description/loss \
		--order linear mlp qformer_tiny resampler_tiny --baseline linear \
		--rename synthetic/vqa/exact_match="VQA EM" synthetic/ocr/exact_match="OCR EM" \
		synthetic/region/caption_exact_match="region caption EM" synthetic/region/grounding_acc_iou50="grounding Acc@0.5" \
		synthetic/description/loss="description loss"

# LLaVA-1.5's Table 2 in miniature: 6 cumulative recipe steps × 3 seeds on the pretrained tiny
# parts (conf/experiment/table2/), then the recipe-steps table in experiments/results/table2/.
# The runs go TABLE2_JOBS at a time (Hydra's joblib launcher), TABLE2_THREADS torch threads each:
# on 2 cores two one-thread runs side by side beat one two-thread run after another by ~1.45x.
# data.num_workers=0: inside joblib's (loky) workers a DataLoader worker process fails to start.
TABLE2_JOBS ?= 2
TABLE2_THREADS ?= 1
table2: install
	$(LMM) train -m +sweep=table2 hydra/launcher=joblib hydra.launcher.n_jobs=$(TABLE2_JOBS) cpu_threads=$(TABLE2_THREADS) \
		data.num_workers=0 trainer.enable_progress_bar=false
	$(LMM) ablate experiments/runs/table2 --spec conf/experiment/table2/table.yml --out experiments/results/table2

# Past LLaVA-1.5 (issue 19): pad vs AnyRes on small text, and single- vs multi-image training on
# two-image questions; 2 rows × 3 seeds each on the pretrained tiny parts, run like make table2.
ablate-anyres: install
	$(LMM) train -m +sweep=anyres hydra/launcher=joblib hydra.launcher.n_jobs=$(TABLE2_JOBS) cpu_threads=$(TABLE2_THREADS) \
		data.num_workers=0 trainer.enable_progress_bar=false
	$(LMM) ablate experiments/runs/high_res --spec conf/experiment/high_res/table.yml --out experiments/results/anyres

ablate-multi-image: install
	$(LMM) train -m +sweep=multi_image hydra/launcher=joblib hydra.launcher.n_jobs=$(TABLE2_JOBS) cpu_threads=$(TABLE2_THREADS) \
		data.num_workers=0 trainer.enable_progress_bar=false
	$(LMM) ablate experiments/runs/two_image --spec conf/experiment/two_image/table.yml --out experiments/results/multi_image

# What matters in miniature: connector type × visual-token budget × resolution × 3 seeds with blind
# controls (conf/sweep/design_space.yaml, 48 runs, 19-22 min on 2 cores), then the full table and one
# table per factor (its main effect: each row averages over the other factors, every run paired
# with the run of the same other factors and seed) in experiments/results/design_space/.
DESIGN_SPACE_ABLATE := $(LMM) ablate experiments/runs/design_space --match steps \
	--order linear mlp qformer_tiny resampler_tiny 16 64 tiny_pretrained tiny_pretrained_128 \
	--label tiny_pretrained="64 px" tiny_pretrained_128="128 px"
DESIGN_SPACE_TABLE := $(DESIGN_SPACE_ABLATE) \
	--metrics synthetic/vqa/exact_match,synthetic.needs_vision/vqa/exact_match,synthetic/ocr/exact_match,synthetic.needs_vision/ocr/exact_match,synthetic/ocr_small/exact_match,synthetic/region/grounding_acc_iou50,synthetic/description/loss \
	--rename synthetic/vqa/exact_match="VQA EM" synthetic.needs_vision/vqa/exact_match="VQA needs vision" \
	synthetic/ocr/exact_match="OCR EM" synthetic.needs_vision/ocr/exact_match="OCR needs vision" \
	synthetic/ocr_small/exact_match="small-word OCR EM" synthetic/region/grounding_acc_iou50="grounding Acc@0.5" \
	synthetic/description/loss="description loss"
# What each question type needs of the image, per connector (lmm.eval.blind's per-question-type metrics).
DESIGN_SPACE_TYPES := $(DESIGN_SPACE_ABLATE) --rows connector --baseline linear \
	--metrics synthetic.needs_vision/qtype/vqa/colour,synthetic.needs_vision/qtype/vqa/count,synthetic.needs_vision/qtype/vqa/position,synthetic.needs_vision/qtype/vqa/shape,synthetic.needs_vision/qtype/ocr/text_colour,synthetic.needs_vision/qtype/ocr/word,synthetic.needs_vision/qtype/ocr_small/word \
	--rename synthetic.needs_vision/qtype/vqa/colour="colour" synthetic.needs_vision/qtype/vqa/count="count" \
	synthetic.needs_vision/qtype/vqa/position="position" synthetic.needs_vision/qtype/vqa/shape="shape" \
	synthetic.needs_vision/qtype/ocr/text_colour="text colour" synthetic.needs_vision/qtype/ocr/word="word" \
	synthetic.needs_vision/qtype/ocr_small/word="small word"
design-space: install
	$(LMM) train -m +sweep=design_space hydra/launcher=joblib hydra.launcher.n_jobs=$(TABLE2_JOBS) \
		cpu_threads=$(TABLE2_THREADS) data.num_workers=0 trainer.enable_progress_bar=false
	$(DESIGN_SPACE_TABLE) --baseline "linear, 64, tiny_pretrained" --out experiments/results/design_space
	$(DESIGN_SPACE_TABLE) --rows connector --baseline linear --out experiments/results/design_space/by_connector
	$(DESIGN_SPACE_TABLE) --rows connector.tokens --baseline 16 --out experiments/results/design_space/by_tokens
	$(DESIGN_SPACE_TABLE) --rows vision --baseline tiny_pretrained --out experiments/results/design_space/by_resolution
	$(DESIGN_SPACE_TYPES) --out experiments/results/design_space/needs_vision_by_question_type

table: install
	@test -n "$(SWEEP)" || { echo "usage: make table SWEEP=experiments/runs/<name>"; exit 2; }
	$(LMM) ablate $(SWEEP)

# ruff: format and lint (rules E/F/W/B/I, 120 columns; [tool.ruff] in pyproject.toml). `make format` fixes what it can.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# With the lmms-eval extra, whose round-trip test must then run (not skip).
test: install-lmms-eval
	LMM_TEST_EXTRAS=required $(PY) -m pytest -q tests

# The inner loop: no subprocess trainings, no SLURM, no lmms-eval round trip (the tests marked slow).
test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

describe: install
	$(LMM) train task=describe connector=mlp llm=vicuna13b vision=clip_l14_336

simulate: install
	$(LMM) train experiment=llava15_13b task=simulate trainer.devices=8 simulate.gpu_memory_gib=40

# The simulated tables and plots in docs/scale_out/ (~7 minutes on 2 cores). The paper's global
# batches (256, 128) cannot be split over 512 GPUs; the last run shows 13B at a global batch of 1024.
SCALE_OUT_RUNS := llava15_7b_pretrain llava15_7b llava15_13b_pretrain llava15_13b
scale-out: install
	rm -rf docs/scale_out && mkdir -p docs/scale_out
	for e in $(SCALE_OUT_RUNS); do \
	  $(LMM) train experiment=$$e task=simulate trainer.devices=8 simulate.gpu_memory_gib=40 simulate.world_sizes=[8,64,512] simulate.out=docs/scale_out/$$e || exit 1; done
	$(LMM) train experiment=llava15_13b task=simulate trainer.devices=8 stage.global_batch_size=1024 simulate.world_sizes=[8,64,512] \
	  simulate.out=docs/scale_out/llava15_13b_global1024
	$(LMM) scale-out-docs docs/scale_out.md $(addprefix docs/scale_out/,$(SCALE_OUT_RUNS)) docs/scale_out/llava15_13b_global1024

lock: install-lmms-eval
	{ head -n 3 requirements.lock; $(PY) -m pip freeze --exclude-editable | grep -v -E '^(torch==|torchvision==|nvidia-|triton==|cuda-)'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean-runs:
	rm -rf experiments/runs
