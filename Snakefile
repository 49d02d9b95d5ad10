# microdit workflow: validate the config, include the rules, define the targets. All logic is in `microdit`.
#   snakemake -n                                                  (the tiny preset, from profiles/default)
#   snakemake --profile profiles/local                            (make demo)
#   snakemake --profile slurm --configfile config/paper.yaml      (the paper, after `make profiles`)
import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from microdit.workflow import config_errors, one_of, schema_errors, stage_setting_errors

min_version("9.27")  # the workflow profile, the profile keys and the executor plugin as tested (envs/requirements.txt)

if not config:
    raise ValueError("no configuration: pass --configfile config/tiny.yaml or --configfile config/paper.yaml "
                     "(profiles/default names the tiny preset when Snakemake runs in the checkout)")
if errors := schema_errors(config, os.path.join(workflow.basedir, "config", "schema.yaml")):
    raise WorkflowError("invalid config:\n  " + "\n  ".join(errors))
# the schema checks each section on its own; a name that points at a missing download, dataset or stage would
# otherwise surface as a KeyError deep in the DAG, or not at all
if errors := config_errors(config, workflow.basedir):
    raise WorkflowError("invalid config:\n  " + "\n  ".join(errors))


# a wildcard takes only the config's names: a typo'd target meets no rule (Snakemake's own error), not a KeyError
wildcard_constraints:
    stage=one_of(config["stages"]),


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/convert.smk"
include: "rules/vae.smk"
include: "rules/precompute.smk"
include: "rules/train.smk"
include: "rules/sample.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


# each stage's settings as its job will resolve them (stage YAML + the workflow's overrides), checked before any job
if workflow.is_main_process:
    if errors := [e for s in STAGES for e in stage_setting_errors(s, stage_yaml(s), stage_overrides(s))]:
        raise WorkflowError("invalid stage settings:\n  " + "\n  ".join(errors))


# the stages' datasets and the held-out one: the latents the stages read
LATENT_DATASETS = sorted({d for spec in config["stages"].values() for d in spec["datasets"]}
                           | ({config["validation"]["dataset"]} if "validation" in config else set()))


rule all:
    input:
        f"{RUN}/report.html",


rule eval:
    input:
        all_evaluation_outputs(),


rule data:
    input:
        [f"{latents_dir(d)}/index.json" for d in LATENT_DATASETS],


for _stage in STAGES:  # named targets: snakemake stage1 ... stage4, with every export (a missing one is re-exported)

    rule:
        name:
            _stage
        input:
            stage_exports(_stage),
