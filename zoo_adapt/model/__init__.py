"""Surgery on a described model: build it through its plugin, swap the head, read
weights files, freeze layer groups, give each group its learning rate. `recipes.py`
holds the names of the training recipes (strategies, schedules, optimizers, BatchNorm
policies, rate spreads) together with what each means, torch-free, so the job's
options and the engine read them from one place."""
