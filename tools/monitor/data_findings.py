"""The monitor's findings on the data splits: a leak (the same image in train and another split), a class
missing from a split. The facts come from `tools.data.checks`."""
from tools.data.checks import as_labels, leaks, missing_classes
from tools.monitor.epoch_figures import Finding


def split_findings(splits: dict[str, tuple], classes: list[str]) -> list[Finding]:
    """Findings on the splits: name -> (images (N, ...) tensor, targets list); 'train' is the reference."""
    if not isinstance(splits, dict) or not all(isinstance(v, (tuple, list)) and len(v) == 2 for v in splits.values()):
        raise TypeError("check_data(splits): a dict of split name -> (images, targets), e.g. "
                        "{'train': (x_train, y_train), 'valid': (x_valid, y_valid)}")
    findings = []
    filled = {n: images for n, (images, _) in splits.items() if len(images)}  # an empty split holds no leak
    for name, indices in (leaks(filled) if "train" in filled else {}).items():
        if indices:
            total = len(splits[name][0])
            findings.append(Finding("data-leak", f"{len(indices)} of {total} {name} images are also in train "
                                    f"(identical pixels after decoding): the {name} figures overstate the model",
                                    f"train/{name}", "remove the duplicates, then split (a photo copied under two "
                                    "names lands in both)"))
    missing = missing_classes({n: as_labels(t) for n, (_, t) in splits.items()}, classes)
    for split in dict.fromkeys(s for _, s in missing):
        names = [c for c, s in missing if s == split]
        findings.append(Finding("class-missing", f"class {', '.join(names)} has no {split} image: its {split} "
                                "accuracy is not measured", split,
                                "add images of it (a class needs at least 3 for one valid and one test image)"))
    return findings
