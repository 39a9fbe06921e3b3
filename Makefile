# The concurrency lab: reference servers, the load generator, the incrementor,
# their tests, the bench and the lab.  `make help` lists the targets.

CC      ?= cc
OPT     ?= -O2
V       ?= 0
Q        = $(if $(filter 1,$(V)),,@)
say      = $(if $(filter 1,$(V)),,@printf '  %-6s %s\n' $(1) $(2);)

WARN     = -Wall -Wextra -Wstrict-prototypes -Wmissing-prototypes -Wshadow -Wpointer-arith
CFLAGS  ?=
CFLAGS  += -std=gnu11 $(OPT) -g $(WARN) -D_GNU_SOURCE -pthread -MMD -MP -Iservers
LDLIBS  += -pthread -lm
ifneq ($(CI),)
CFLAGS  += -Werror
endif

ifneq ($(SANITIZE),)
CFLAGS  += -fsanitize=$(SANITIZE) -fno-sanitize-recover=all -fno-omit-frame-pointer
LDFLAGS += -fsanitize=$(SANITIZE)
BUILD   := build/san
BIN     := build/san/bin
else
BUILD   := build/obj
BIN     := bin
endif

# Debian packages, found through pkg-config once scripts/deps.sh has run.
pkg      = $(shell pkg-config --$(1) $(2) 2>/dev/null)
LUA      = lua5.4
CFLAGS  += $(call pkg,cflags,$(LUA) libcurl jansson sqlite3 cmocka)

CORE_SRC    := $(wildcard servers/core/*.c)
SERVER_SRC  := $(wildcard servers/*.c)
LOADGEN_SRC := $(wildcard loadgen/*.c)
INCR_SRC    := $(wildcard incrementor/*.c)
TLIB_SRC    := $(wildcard tests/lib/*.c)
UNIT_SRC    := $(wildcard tests/unit/test_*.c)
INTEG_SRC   := $(wildcard tests/integration/test_*.c)

obj      = $(patsubst %.c,$(BUILD)/%.o,$(1))
CORE_LIB := $(BUILD)/libcore.a
TLIB     := $(BUILD)/libtest.a
SERVERS  := $(patsubst servers/%.c,$(BIN)/server-%,$(SERVER_SRC))
LOADGEN  := $(if $(LOADGEN_SRC),$(BIN)/loadgen)
INCR     := $(if $(INCR_SRC),$(BIN)/incrementor)
UNITS    := $(patsubst tests/unit/%.c,$(BIN)/tests/unit-%,$(UNIT_SRC))
INTEGS   := $(patsubst tests/integration/%.c,$(BIN)/tests/integration-%,$(INTEG_SRC))
DEPS_OK  := build/.deps-ok

.PHONY: all test test-unit test-integration bench bench-quick lab deps format clean help fuzz fuzz-long
.DEFAULT_GOAL := all
.SECONDARY:

all: $(SERVERS) $(LOADGEN) $(INCR)

help:
	@echo "make              build every binary into bin/"
	@echo "make test         build and run the whole test suite"
	@echo "make bench        compare every design (results/)"
	@echo "make bench-quick  the same, shorter"
	@echo "make lab          run the teaching lab's experiments"
	@echo "make SANITIZE=address,undefined test   the suite under ASan and UBSan"
	@echo "make fuzz-long FUZZ_TIME=600   a fuzzing campaign per target, corpora merged"
	@echo "make V=1          show the commands"

# Install missing Debian packages once per checkout (see scripts/deps.sh).
$(DEPS_OK): scripts/deps.sh
	$(Q)scripts/deps.sh build
	$(Q)mkdir -p $(@D) && touch $@

deps:
	$(Q)scripts/deps.sh all

$(BUILD)/%.o: %.c | $(DEPS_OK)
	$(call say,CC,$<)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) $(CFLAGS) -c -o $@ $<

$(CORE_LIB): $(call obj,$(CORE_SRC))
	$(call say,AR,$@)
	$(Q)rm -f $@ && ar rcs $@ $^

$(TLIB): $(call obj,$(TLIB_SRC))
	$(call say,AR,$@)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BIN)/server-%: $(BUILD)/servers/%.o $(CORE_LIB)
	$(call say,LINK,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(call pkg,libs,$(LUA)) $(LDLIBS)

$(BIN)/loadgen: $(call obj,$(LOADGEN_SRC)) $(CORE_LIB)
	$(call say,LINK,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(call pkg,libs,libcurl jansson) $(LDLIBS)

$(BIN)/incrementor: $(call obj,$(INCR_SRC)) $(CORE_LIB)
	$(call say,LINK,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(call pkg,libs,sqlite3 jansson) $(LDLIBS)

# Unit tests link the core (and the loadgen's modules, minus its main).
LOADGEN_LIB_OBJ = $(call obj,$(filter-out loadgen/main.c,$(LOADGEN_SRC)))
INCR_LIB_OBJ    = $(call obj,$(filter-out incrementor/main.c,$(INCR_SRC)))
TEST_LIBS       = $(call pkg,libs,cmocka $(LUA) libcurl jansson sqlite3) $(LDLIBS)

$(BIN)/tests/unit-%: $(BUILD)/tests/unit/%.o $(LOADGEN_LIB_OBJ) $(INCR_LIB_OBJ) $(TLIB) $(CORE_LIB)
	$(call say,LINK,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(TEST_LIBS)

$(BIN)/tests/integration-%: $(BUILD)/tests/integration/%.o $(TLIB) $(CORE_LIB)
	$(call say,LINK,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(TEST_LIBS)

tests: all $(UNITS) $(INTEGS)

# libFuzzer targets (tests/fuzz/fuzz_<x>.c -> build/fuzz/fuzz_<x>), built with
# clang when it is there. Each links what FUZZ_LINK_<x> names, compiled with
# the fuzzing flags into build/fuzz/obj/, and the libraries of FUZZ_LIBS_<x>.
# `make test` runs each for FUZZ_TIME seconds; `make fuzz-long` runs a campaign
# per target (FUZZ_TIME seconds or FUZZ_RUNS executions each) and merges what
# it finds, minimized, into tests/fuzz/corpus/<x>/.
FUZZ_CC     ?= clang
FUZZ_SRC    := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_NAMES  := $(patsubst tests/fuzz/fuzz_%.c,%,$(FUZZ_SRC))
FUZZ_BINS   := $(if $(shell command -v $(FUZZ_CC) 2>/dev/null),$(patsubst %,build/fuzz/fuzz_%,$(FUZZ_NAMES)))
FUZZ_TIME   ?= 10
FUZZ_RUNS   ?=
FUZZ_SAN     = -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
FUZZ_CFLAGS  = -std=gnu11 -g -O1 -D_GNU_SOURCE -I. -Iservers -MMD -MP $(WARN) $(if $(CI),-Werror) \
               $(call pkg,cflags,jansson) $(subst fuzzer,fuzzer-no-link,$(FUZZ_SAN))

FUZZ_LINK_http       = servers/core/http.c
FUZZ_LINK_proto      = servers/core/proto.c
FUZZ_LINK_incr_form  = incrementor/parse.c servers/core/http.c
FUZZ_LIBS_incr_form  = $(call pkg,libs,jansson)
FUZZ_LINK_incr_json  = incrementor/parse.c servers/core/http.c
FUZZ_LIBS_incr_json  = $(call pkg,libs,jansson)
FUZZ_LINK_check      = loadgen/check.c servers/core/http.c servers/core/proto.c servers/core/buf.c
# The whole session, on a fake clock (tests/fuzz/fake_clock.c instead of timer.c).
FUZZ_LINK_session    = servers/core/session.c servers/core/http.c servers/core/proto.c \
                       servers/core/buf.c servers/core/metrics.c tests/fuzz/fake_clock.c
FUZZ_LIBS_session    = -pthread

fuzz_obj = $(patsubst %.c,build/fuzz/obj/%.o,$(1))

build/fuzz/obj/%.o: %.c | $(DEPS_OK)
	$(call say,FUZZCC,$<)
	$(Q)mkdir -p $(@D)
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -c -o $@ $<

define FUZZ_TARGET
build/fuzz/fuzz_$(1): $(call fuzz_obj,tests/fuzz/fuzz_$(1).c $(FUZZ_LINK_$(1)))
	$$(call say,FUZZLD,$$@)
	$$(Q)$$(FUZZ_CC) $$(FUZZ_SAN) -o $$@ $$^ $$(FUZZ_LIBS_$(1))
endef
$(foreach t,$(FUZZ_NAMES),$(eval $(call FUZZ_TARGET,$(t))))

fuzz: $(FUZZ_BINS)
	$(Q)FUZZ_TIME=$(FUZZ_TIME) scripts/test fuzz

fuzz-long: $(FUZZ_BINS)
	$(Q)FUZZ_TIME=$(FUZZ_TIME) FUZZ_RUNS=$(FUZZ_RUNS) scripts/fuzz-campaign $(FUZZ_NAMES)

# The whole suite: unit, integration and script tests, each bounded in time.
test: tests $(FUZZ_BINS)
	$(Q)BIN=$(BIN) FUZZ_TIME=$(FUZZ_TIME) scripts/test

test-unit: tests
	$(Q)BIN=$(BIN) scripts/test unit

test-integration: tests
	$(Q)BIN=$(BIN) scripts/test integration

# make bench DESIGNS=epoll,reactor SCENARIOS=throughput,c10k DURATION=5 REPEAT=5
BENCH_ARGS = $(if $(DESIGNS),--designs $(DESIGNS)) $(if $(SCENARIOS),--scenarios $(SCENARIOS)) \
             $(if $(DURATION),--duration $(DURATION)) $(if $(REPEAT),--repeat $(REPEAT))

bench: all
	$(Q)scripts/deps.sh bench
	$(Q)BIN=$(BIN) BENCH_CFLAGS="$(OPT) -g $(if $(SANITIZE),-fsanitize=$(SANITIZE))" scripts/bench $(BENCH_ARGS)

bench-quick: all
	$(Q)scripts/deps.sh bench
	$(Q)BIN=$(BIN) BENCH_CFLAGS="$(OPT) -g $(if $(SANITIZE),-fsanitize=$(SANITIZE))" scripts/bench --quick $(BENCH_ARGS)

# The lab runs the servers, loadgen, the incrementor and, for `conform`, the
# protocol checks of tests/integration/test_servers.c (scripts/lab's NEEDS).
lab: all $(BIN)/tests/integration-test_servers
	$(Q)scripts/deps.sh bench
	$(Q)BIN=$(BIN) scripts/lab --all

format:
	$(Q)clang-format -i $(CORE_SRC) $(SERVER_SRC) $(LOADGEN_SRC) $(INCR_SRC) servers/core/*.h \
	    $(wildcard loadgen/*.h incrementor/*.h tests/*/*.c tests/*/*.h)

clean:
	rm -rf build bin

-include $(shell find build -name '*.d' 2>/dev/null)
