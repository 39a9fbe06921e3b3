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
CFLAGS  += $(call pkg,cflags,libcurl jansson sqlite3 cmocka zlib hiredis)

CORE_SRC    := $(wildcard servers/core/*.c)
SANDBOX_SRC := $(wildcard servers/sandbox/*.c)
SERVER_SRC  := $(wildcard servers/*.c)
LOADGEN_SRC := $(wildcard loadgen/*.c)
INCR_SRC    := $(wildcard incrementor/*.c)
WORLD_SRC   := $(wildcard world/*.c)
TLIB_SRC    := $(wildcard tests/lib/*.c)
UNIT_SRC    := $(wildcard tests/unit/test_*.c)
INTEG_SRC   := $(wildcard tests/integration/test_*.c)

obj      = $(patsubst %.c,$(BUILD)/%.o,$(1))
CORE_LIB := $(BUILD)/libcore.a
SANDBOX_LIB := $(BUILD)/libsandbox.a
TLIB     := $(BUILD)/libtest.a
SERVERS  := $(patsubst servers/%.c,$(BIN)/server-%,$(SERVER_SRC))
LOADGEN  := $(if $(LOADGEN_SRC),$(BIN)/loadgen)
INCR     := $(if $(INCR_SRC),$(BIN)/incrementor)
WORLD    := $(if $(WORLD_SRC),$(BIN)/world-link)
UNITS    := $(patsubst tests/unit/%.c,$(BIN)/tests/unit-%,$(UNIT_SRC))
INTEGS   := $(patsubst tests/integration/%.c,$(BIN)/tests/integration-%,$(INTEG_SRC))
DEPS_OK  := build/.deps-ok

.PHONY: all test test-unit test-integration bench bench-quick lab deps format format-check clean help fuzz fuzz-long check-incrementor
.DEFAULT_GOAL := all
.SECONDARY:

all: $(SERVERS) $(LOADGEN) $(INCR) $(WORLD)

help:
	@echo "make              build every binary into bin/"
	@echo "make test         build and run the whole test suite"
	@echo "make bench        compare every design (results/)"
	@echo "make bench-quick  the same, shorter"
	@echo "make check-incrementor  the incrementor under SIGKILL rounds: acknowledged = committed"
	@echo "make lab          run the teaching lab's experiments"
	@echo "make SANITIZE=address,undefined test   the suite under ASan and UBSan"
	@echo "make fuzz-long FUZZ_TIME=600   a fuzzing campaign per target, corpora merged"
	@echo "make format       format the C files (.clang-format); make format-check: CI's check"
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

$(SANDBOX_LIB): $(call obj,$(SANDBOX_SRC))
	$(call say,AR,$@)
	$(Q)rm -f $@ && ar rcs $@ $^

$(TLIB): $(call obj,$(TLIB_SRC))
	$(call say,AR,$@)
	$(Q)rm -f $@ && ar rcs $@ $^

$(BIN)/server-%: $(BUILD)/servers/%.o $(CORE_LIB)
	$(call say,LINK,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# io_uring (Debian's liburing-dev): of the servers, server-uring's alone.
$(BIN)/server-uring: LDLIBS += $(or $(call pkg,libs,liburing),-luring)

$(BIN)/loadgen: $(call obj,$(LOADGEN_SRC)) $(CORE_LIB)
	$(call say,LINK,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(call pkg,libs,libcurl jansson zlib liburing) $(LDLIBS)

$(BIN)/incrementor: $(call obj,$(INCR_SRC)) $(CORE_LIB)
	$(call say,LINK,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(call pkg,libs,sqlite3 jansson hiredis) $(LDLIBS)

$(BIN)/world-link: $(call obj,$(WORLD_SRC)) $(CORE_LIB)
	$(call say,LINK,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Unit tests link the core (and the loadgen's, the incrementor's and the link
# emulator's modules, minus their main, with the reactor they run on; minus
# loadgen's io_uring engine too, so that only bin/loadgen links liburing).
LOADGEN_LIB_OBJ = $(call obj,$(filter-out loadgen/main.c loadgen/engine_uring.c,$(LOADGEN_SRC)))
INCR_LIB_OBJ    = $(call obj,$(filter-out incrementor/main.c,$(INCR_SRC)))
WORLD_LIB_OBJ   = $(call obj,$(filter-out world/main.c,$(WORLD_SRC)))
TEST_LIBS       = $(call pkg,libs,cmocka libcurl jansson sqlite3 zlib hiredis) $(LDLIBS)

$(BIN)/tests/unit-%: $(BUILD)/tests/unit/%.o $(LOADGEN_LIB_OBJ) $(INCR_LIB_OBJ) $(WORLD_LIB_OBJ) \
                     $(TLIB) $(CORE_LIB)
	$(call say,LINK,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(TEST_LIBS)

$(BIN)/tests/integration-%: $(BUILD)/tests/integration/%.o $(TLIB) $(CORE_LIB)
	$(call say,LINK,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(TEST_LIBS)

# The live dashboard's page is built into loadgen (.incbin in loadgen/live.c).
$(BUILD)/loadgen/live.o: loadgen/live.html

# test_incrementor's LD_PRELOAD library: slow WAL syncs, epoll_ctl counted (see its head).
$(BIN)/tests/preload.so: tests/integration/preload.c
	$(call say,LINK,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) -std=gnu11 -O2 -D_GNU_SOURCE -shared -fPIC -o $@ $< -ldl
$(BIN)/tests/integration-test_incrementor: | $(BIN)/tests/preload.so

# The loadgen's test reads the histograms loadgen writes.
$(BIN)/tests/integration-test_loadgen: $(call obj,loadgen/hist.c loadgen/hlog.c)

# The sandbox (servers/sandbox/) is the one user of Lua: its library, Lua's
# flags and Lua's libraries go to server-sandboxed and the unit tests named
# test_sandbox*.c only, so no other binary links Lua or the sandbox's signal
# handlers. (Explicit rules: the library must come before the core's.)
LUA_CFLAGS     = $(call pkg,cflags,$(LUA))
LUA_LIBS       = $(call pkg,libs,$(LUA))
SANDBOX_UNITS := $(patsubst tests/unit/%.c,$(BIN)/tests/unit-%,$(wildcard tests/unit/test_sandbox*.c))

$(call obj,$(SANDBOX_SRC) $(wildcard tests/unit/test_sandbox*.c)): CFLAGS += $(LUA_CFLAGS)

$(BIN)/server-sandboxed: $(BUILD)/servers/sandboxed.o $(SANDBOX_LIB) $(CORE_LIB)
	$(call say,LINK,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LUA_LIBS) $(LDLIBS)

$(SANDBOX_UNITS): $(BIN)/tests/unit-%: $(BUILD)/tests/unit/%.o $(LOADGEN_LIB_OBJ) $(INCR_LIB_OBJ) \
                  $(WORLD_LIB_OBJ) $(TLIB) $(SANDBOX_LIB) $(CORE_LIB)
	$(call say,LINK,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LUA_LIBS) $(TEST_LIBS)

tests: all $(UNITS) $(INTEGS)

# libFuzzer targets (tests/fuzz/fuzz_<x>.c -> build/fuzz/fuzz_<x>), built with
# clang when it is there. Each links the sources FUZZ_LINK_<x> adds (outside
# the core), then the whole core as an archive, build/fuzz/libcore.a (the
# linker takes from it only the objects the target needs), all compiled with
# the fuzzing flags into build/fuzz/obj/, and the libraries of FUZZ_LIBS_<x>.
# A core file is replaced by linking one that defines its functions first:
# the archive's is then never taken (a clash is a link error, not a silent
# choice). So a new core file needs no change here.
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

FUZZ_LINK_incr_form  = incrementor/parse.c
FUZZ_LIBS_incr_form  = $(call pkg,libs,jansson)
FUZZ_LINK_incr_json  = incrementor/parse.c
FUZZ_LIBS_incr_json  = $(call pkg,libs,jansson)
FUZZ_LINK_check      = loadgen/check.c
# The whole session, on a fake clock (tests/fuzz/fake_clock.c instead of timer.c).
FUZZ_LINK_session    = tests/fuzz/fake_clock.c
FUZZ_LIBS_session    = -pthread

fuzz_obj     = $(patsubst %.c,build/fuzz/obj/%.o,$(1))
FUZZ_CORE   := build/fuzz/libcore.a

$(FUZZ_CORE): $(call fuzz_obj,$(CORE_SRC))
	$(call say,AR,$@)
	$(Q)rm -f $@ && ar rcs $@ $^

build/fuzz/obj/%.o: %.c | $(DEPS_OK)
	$(call say,FUZZCC,$<)
	$(Q)mkdir -p $(@D)
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -c -o $@ $<

define FUZZ_TARGET
build/fuzz/fuzz_$(1): $(call fuzz_obj,tests/fuzz/fuzz_$(1).c $(FUZZ_LINK_$(1))) $(FUZZ_CORE)
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

# The incrementor's correctness under SIGKILL (scripts/check-incrementor):
# 20 kill rounds, durable mode exact. CHECK_ARGS for more (--ack buffered,
# --topology redis, --rounds N...).
check-incrementor: all
	$(Q)BIN=$(BIN) scripts/check-incrementor $(CHECK_ARGS)

# make bench DESIGNS=epoll,reactor SCENARIOS=throughput,c10k DURATION=5 REPEAT=5
# Over an emulated link, the server limited (scripts/world.py; root):
# make bench RTT=20ms LOSS=0.1% RATE=100mbit CPU_QUOTA=0.5 MEM_LIMIT=64M
BENCH_ARGS = $(if $(DESIGNS),--designs $(DESIGNS)) $(if $(SCENARIOS),--scenarios $(SCENARIOS)) \
             $(if $(DURATION),--duration $(DURATION)) $(if $(REPEAT),--repeat $(REPEAT)) \
             $(if $(RTT),--rtt=$(RTT)) $(if $(LOSS),--loss=$(LOSS)) $(if $(RATE),--rate=$(RATE)) \
             $(if $(CPU_QUOTA),--cpu-quota=$(CPU_QUOTA)) $(if $(MEM_LIMIT),--mem-limit=$(MEM_LIMIT)) \
             $(LIVE_ARG)
# make bench LIVE=1 (or make lab LIVE=1): a live dashboard on a free port, LIVE=PORT on that one.
LIVE_ARG   = $(if $(LIVE),--live$(if $(filter-out 1,$(LIVE)),=$(LIVE)))

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
	$(Q)BIN=$(BIN) scripts/lab --all $(LIVE_ARG)

# Every C file, formatted by .clang-format: `make format` rewrites them,
# `make format-check` (in .ci/run) lists the files it would change and fails.
FORMAT_SRC = $(wildcard servers/*.c servers/*/*.[ch] loadgen/*.[ch] incrementor/*.[ch] world/*.[ch] \
                        tests/*/*.[ch])

format: | $(DEPS_OK)
	$(Q)clang-format -i $(FORMAT_SRC)

format-check: | $(DEPS_OK)
	$(Q)bad=$$(for f in $(FORMAT_SRC); do clang-format $$f | cmp -s - $$f || echo $$f; done); \
	if [ -n "$$bad" ]; then echo "not formatted (make format): $$bad" >&2; exit 1; fi

clean:
	rm -rf build bin

-include $(shell find build -name '*.d' 2>/dev/null)
