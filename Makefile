.PHONY: test build bench demo

build:
	go build -o walletguard ./cmd/walletguard

test:
	./scripts/test

bench:
	go test -run '^$$' -bench . -benchmem ./event/ ./detector/

demo:
	go run ./cmd/walletguard demo
