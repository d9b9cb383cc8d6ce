"""The catalogue, torch-free: what a backbone is (plain data), the hooks plugins
implement, the plugin manager, which plugin answers which question, the names users
type (registry files and plugin registrations, claimed under one rule), where zoo
weights live, and the adaptation methods and experiment trackers plugins declare.
`zoo-adapt list` imports only this folder."""
