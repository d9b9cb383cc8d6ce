"""Image files in, batches on the device out: decoding, class folders and label files,
the embedded demo sets, transforms and augmentation recipes, and the three batch
sources the loop consumes (loader workers, images held on the device, cached
features)."""
