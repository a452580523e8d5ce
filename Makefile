# fraudscore — the two commands: `make demo` runs the platform, `make test` runs every test.
.PHONY: demo up test bench lint proto clean

demo:            ## run the local platform with simulated traffic and a live summary
	@scripts/bootstrap.sh
	.venv/bin/fraudscore up --demo

up:              ## run the local platform (embedded broker + store unless KAFKA_BOOTSTRAP/REDIS_URL)
	@scripts/bootstrap.sh
	.venv/bin/fraudscore up

test:            ## run the whole test suite (starts its own broker, Redis nodes, AWS API servers)
	@scripts/bootstrap.sh
	@scripts/install_redis.sh || echo "!! could not install redis-server (the Redis tests will skip, or fail under CI=true)" >&2
	@scripts/install_chromium.sh || echo "!! could not install chromium (the HTML report test will skip, or fail under CI=true)" >&2
	@scripts/install_kinesalite.sh || echo "!! could not install kinesalite (the Kinesis resharding tests will skip, or fail under CI=true)" >&2
	.venv/bin/python -m pytest $(PYTEST_ARGS)

lint:            ## ruff + mypy on the core packages
	@scripts/bootstrap.sh
	.venv/bin/ruff check .
	.venv/bin/mypy contracts feature_state rules scoring

proto:           ## regenerate gRPC code from scoring/proto (checked in; never edit by hand)
	@scripts/bootstrap.sh
	.venv/bin/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. scoring/proto/fraudscore/v1/scoring.proto

clean:
	rm -rf .fraudscore .pytest_cache reports
