# podnet.fabric - see README.md. All targets run as root on a Debian 12 machine, and each one installs
# what it needs first (scripts/bootstrap.sh: a no-op in well under a second once done).
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_PYTHON_INTERPRETER := $(VENV)/bin/python
export ANSIBLE_FORCE_COLOR := 0
SCENARIO ?= default
BENCH ?= ipam
BENCHES := $(patsubst bench/%.py,%,$(wildcard bench/[a-z]*.py))
PYTEST_ARGS ?=
COLL := build/ansible_collections/podnet/fabric

.PHONY: bootstrap demo down test test-vm sanity lint unit integration molecule bench bench-quick ee clean

# scripts/test.sh runs bootstrap once and sets PODNET_BOOTSTRAPPED for the targets it calls.
bootstrap:
	@[ -n "$(PODNET_BOOTSTRAPPED)" ] || scripts/bootstrap.sh

demo: bootstrap
	ansible-playbook -i inventories/lab playbooks/lab_up.yml
	ansible-playbook -i inventories/lab playbooks/site.yml
	@ansible-playbook -i inventories/lab playbooks/summary.yml | sed -n '/podnet cluster/,/^$$/p' | sed 's/^ *//'

down: bootstrap
	ansible-playbook -i inventories/lab playbooks/lab_down.yml

# The whole suite in stages (static, lab, bench), with a table of wall time per stage at the end.
test:
	@scripts/test.sh

# The VM tier: Debian 12 VMs under qemu TCG (scripts/vm/), one molecule/vm_* scenario at a time, with
# its own bootstrap step (qemu, debootstrap, vde2) so that the namespace suite does not pay for it.
VM_SCENARIOS ?=
test-vm: bootstrap
	@scripts/vm/test.sh $(VM_SCENARIOS)

# ansible-test needs the collection at ansible_collections/<ns>/<name>: test a copy of the tracked files.
sanity: bootstrap
	@# ansible-test fetches a pip bootstrap script from a host this machine can't reach: give it ours.
	@mkdir -p ~/.ansible/test/cache; for v in $$(grep -oh "pip='[0-9.]*'" $(VENV)/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py | tr -dc "0-9.\n" | sort -u); do \
	  cp scripts/get_pip_standin.py ~/.ansible/test/cache/get_pip_$${v//./_}.py; done
	rm -rf build/ansible_collections && mkdir -p $(COLL)
	git ls-files -co --exclude-standard -z | rsync -a --from0 --files-from=- ./ $(COLL)/
	cd $(COLL) && git init -q . && git add -A && ansible-test sanity --requirements --python 3.11 --color no

lint: bootstrap
	ansible-lint --profile production --nocolor

unit: bootstrap
	scripts/pytest.sh -n 2 tests/unit

integration: bootstrap
	scripts/pytest.sh $(PYTEST_ARGS) tests/integration

molecule: bootstrap
	molecule test -s $(SCENARIO)

bench: bootstrap
	python bench/$(BENCH).py $(BENCH_ARGS)

# Every benchmark once, small and quick, so a broken benchmark fails the suite (figures: `make bench`).
bench-quick: bootstrap
	@set -e; for b in $(BENCHES); do echo "== bench $$b --quick"; python bench/$$b.py --quick; done

# The execution environment's build context (building the image needs a registry: see README).
ee: bootstrap
	rm -rf build/ee-collection build/ee-context
	ansible-galaxy collection build --force --output-path build/ee-collection .
	ansible-builder create -f execution-environment.yml -c build/ee-context

clean:
	rm -rf build .pytest_cache
