# podnet.fabric - see README.md. All targets run as root on a Debian 12 machine.
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_PYTHON_INTERPRETER := $(VENV)/bin/python
export ANSIBLE_FORCE_COLOR := 0
SCENARIO ?= default
BENCH ?= ipam
COLL := build/ansible_collections/podnet/fabric

.PHONY: bootstrap demo down test sanity lint unit integration molecule bench clean

bootstrap:
	@scripts/bootstrap.sh

demo: bootstrap
	ansible-playbook -i inventories/lab playbooks/lab_up.yml
	ansible-playbook -i inventories/lab playbooks/site.yml
	@ansible-playbook -i inventories/lab playbooks/summary.yml | sed -n '/podnet cluster/,/^$$/p' | sed 's/^ *//'

down: bootstrap
	ansible-playbook -i inventories/lab playbooks/lab_down.yml

test: bootstrap
	$(MAKE) sanity lint unit integration
	$(MAKE) molecule SCENARIO=default
	$(MAKE) molecule SCENARIO=ipam
	$(MAKE) molecule SCENARIO=tunnel
	$(MAKE) molecule SCENARIO=native
	$(MAKE) molecule SCENARIO=bgp
	@echo "make test: all suites passed"

# ansible-test needs the collection at ansible_collections/<ns>/<name>: test a copy of the tracked files.
sanity:
	@# ansible-test fetches a pip bootstrap script from a host this machine can't reach: give it ours.
	@mkdir -p ~/.ansible/test/cache; for v in $$(grep -oh "pip='[0-9.]*'" $(VENV)/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py | tr -dc "0-9.\n" | sort -u); do \
	  cp scripts/get_pip_standin.py ~/.ansible/test/cache/get_pip_$${v//./_}.py; done
	rm -rf build/ansible_collections && mkdir -p $(COLL)
	git ls-files -co --exclude-standard -z | rsync -a --from0 --files-from=- ./ $(COLL)/
	cd $(COLL) && git init -q . && git add -A && ansible-test sanity --requirements --python 3.11 --color no

lint:
	ansible-lint --profile production --nocolor

unit:
	scripts/pytest.sh tests/unit

integration:
	scripts/pytest.sh tests/integration

molecule:
	molecule test -s $(SCENARIO)

bench:
	python bench/$(BENCH).py

clean:
	rm -rf build .pytest_cache
