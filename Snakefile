# microdit workflow: validates the config, includes the rules, defines the targets. All logic is in `microdit`.
from snakemake.utils import validate


configfile: "config/tiny.yaml"


validate(config, "config/schema.yaml")

RUN = f"results/{config['run']}"


include: "rules/demo.smk"


rule all:
    input:
        f"{RUN}/demo/grid.png",
