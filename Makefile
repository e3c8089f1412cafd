# The two commands of the README are `make demo` and `make test`; both install what they need.
.PHONY: deps build test demo bench soak critest deb clean

deps:
	./scripts/install-deps.sh

# Everything in Release, then crest and crestd as Native AOT binaries in artifacts/bin (scripts/build.sh).
# CREST_JIT=1 make build skips the AOT publish; the scripts and tests then run the JIT builds.
build: deps
	./scripts/build.sh

test:
	./scripts/test.sh

demo:
	./scripts/demo.sh

bench:
	./scripts/bench.sh

# Not in CI: minutes of churn against one crestd, then its leaks (scripts/soak.sh; ARGS="--cycles 150 --checkpoints 10").
soak:
	./scripts/soak.sh $(ARGS)

clean:
	dotnet clean Crest.slnx -v q
	rm -rf artifacts

critest:
	./scripts/critest.sh

deb: build
	./scripts/deb.sh
