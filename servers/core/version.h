/* version: the one version string of every binary (servers, loadgen,
 * incrementor), printed by --version as "PROGRAM VERSION" (opt.c). */
#ifndef CORE_VERSION_H
#define CORE_VERSION_H

#define LAB_VERSION "0.1.0"

#endif
