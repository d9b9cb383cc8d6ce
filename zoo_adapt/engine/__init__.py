"""The training engine: the loop (epochs, steps, named events), the runtime that says
how the network runs, the callbacks that each add one behaviour to the loop,
data-parallel processes, the device and the learning-rate finder. The job that builds
a run around it is `zoo_adapt.job.finetune`; `from zoo_adapt import Loop, Callback`
is the public path."""
