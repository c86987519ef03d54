# Targets named in README.md.
PY ?= python3
SEEDS ?= 500
MANY_SEEDS ?= 20000

DIST ?= dist

.PHONY: dist vm-up vm-down test-vm install test test-slow sim-many bench-raft bench-scheduler bench-fleet bench-cluster-scale bench-container-start bench-service bench-overlay bench-service-net bench-stack cluster-up cluster-down demo

install:            ## install orch and its test dependencies (system packages: see .ci/run)
	$(PY) -m pip install -e '.[test]'
	-command -v pyenv >/dev/null && pyenv rehash

dist:               ## a wheel of orch and of each dependency in $(DIST)/wheels: installs offline into a venv (see README)
	rm -rf $(DIST)/wheels && mkdir -p $(DIST)
	$(PY) -m pip wheel -q --disable-pip-version-check . -w $(DIST)/wheels
	@ls $(DIST)/wheels | wc -l | xargs -I{} echo "$(DIST)/wheels: {} wheels, $$(du -sh $(DIST)/wheels | cut -f1)"

test:               ## the default test suite (what CI runs)
	$(PY) -m pytest -q

test-slow:          ## long soak and simulation runs
	$(PY) -m pytest -q -m slow

sim-many:           ## deterministic Raft simulation over many more seeds
	ORCH_SIM_SEEDS=$(MANY_SEEDS) $(PY) -m pytest -q -m slow tests/raft/test_simulation.py

bench-raft:         ## Raft write benchmark against etcd
	$(PY) bench/raft_writes.py

vm-up:              ## 3 Debian 12 VMs under qemu (image from Debian packages, cached), on a bridge in a netns of their own (state in .vmfleet/)
	$(PY) -m tests.harness.vmfleet up

vm-down:            ## stop the VMs, remove their namespace, taps and overlays
	$(PY) -m tests.harness.vmfleet down

test-vm:            ## orch fleet up on 3 fresh VMs, services and an overlay network across them, a reboot, a VM powered off, engine limits with runc and crun (needs qemu; prints the time of each phase)
	ORCH_VM_TESTS=1 PYTHONPATH=$(CURDIR) $(PY) -m pytest -q -s -m vm -p no:cacheprovider tests/vm

cluster-up:         ## a local fleet: 3 managers + 2 workers, each host a network namespace (state in .fleet/)
	$(PY) -m tests.harness.fleet_cluster up

demo:               ## the local fleet (cluster-up) running stack.example.yml: a front end on port 8080 of every node
	$(PY) -m tests.harness.fleet_cluster demo

cluster-down:       ## stop the fleet and remove everything it made
	$(PY) -m tests.harness.fleet_cluster down

bench-scheduler:    ## pure scheduler: 100k tasks onto 5k nodes
	$(PY) bench/scheduler.py

bench-fleet:        ## one manager, 250/500/1000 simulated agents heartbeating over mutual TLS
	$(PY) bench/fleet_scale.py

bench-cluster-scale:  ## 3 managers, 1,000 simulated nodes, 100 x 1,000 tasks: create, kill -9 of the leader, restore, scale to 0
	$(PY) bench/cluster_scale.py

bench-container-start:  ## 100 concurrent container starts through the engine vs plain `runc run -d` (the limit) and docker run (private dockerd)
	$(PY) bench/container_start.py

bench-service:      ## service create/scale/update of 100 tasks: orch vs Docker Swarm (private dockerd)
	$(PY) bench/service_converge.py

bench-overlay:      ## overlay networks on the netns fleet: iperf3 orch vs underlay vs Docker Swarm, new-task reachability
	$(PY) bench/overlay.py

bench-service-net:  ## service names, VIPs, routing mesh and rolling updates on the netns fleet: orch vs Docker Swarm (dnsrr, host mode: no IPVS here)
	$(PY) bench/service_net.py

bench-stack:        ## a 10-service stack deployed and removed, orch vs Docker Swarm from one compose file, on the netns fleet
	$(PY) bench/stack_deploy.py
