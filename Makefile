# Convenience targets; scripts/setup, scripts/test and scripts/demo are the entry points.
APPTAINER ?= apptainer

.PHONY: test demo bench images

test:
	scripts/test

demo:
	scripts/demo

bench:
	.venv/bin/python scripts/bench-relay

# Apptainer images (needs apptainer and a Debian mirror; not buildable on CI here).
images: images/hpk-bubble.sif images/hpktainer-base.sif

images/hpk-bubble.sif: images/hpk-bubble/hpk-bubble.def
	$(APPTAINER) build --fakeroot $@ $<

images/hpktainer-base.sif: images/hpktainer-base/hpktainer-base.def
	$(APPTAINER) build --fakeroot $@ $<
