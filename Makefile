# The two commands of the README are `make demo` and `make test`; both install what they need.
.PHONY: deps build test demo bench critest deb clean

deps:
	./scripts/install-deps.sh

build: deps
	dotnet build Crest.slnx -c Release -v q -clp:ErrorsOnly

test:
	./scripts/test.sh

demo:
	./scripts/demo.sh

bench:
	./scripts/bench.sh

clean:
	dotnet clean Crest.slnx -v q
	rm -rf artifacts

critest:
	./scripts/critest.sh

deb:
	./scripts/deb.sh
