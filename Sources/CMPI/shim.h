// OpenMPI's mpi.h, plus functions for the handles it defines as macros
// (Swift cannot import macros that expand to casts of global symbols).
#include <mpi.h>
#include <mpi-ext.h>   /* MPIX_Allreduce_init: persistent collectives (OpenMPI's pcollreq) */

static inline MPI_Comm goml_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Datatype goml_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype goml_mpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype goml_mpi_int(void) { return MPI_INT; }
static inline MPI_Datatype goml_mpi_uint64(void) { return MPI_UINT64_T; }
static inline MPI_Datatype goml_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Op goml_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Op goml_mpi_max(void) { return MPI_MAX; }
static inline MPI_Op goml_mpi_min(void) { return MPI_MIN; }
static inline void *goml_mpi_in_place(void) { return MPI_IN_PLACE; }
static inline MPI_Status *goml_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline int goml_mpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
static inline int goml_mpi_success(void) { return MPI_SUCCESS; }
static inline int goml_mpi_comm_type_shared(void) { return MPI_COMM_TYPE_SHARED; }
static inline MPI_Info goml_mpi_info_null(void) { return MPI_INFO_NULL; }
static inline MPI_Errhandler goml_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline int goml_mpi_thread_serialized(void) { return MPI_THREAD_SERIALIZED; }
static inline MPI_Datatype goml_mpi_uint16(void) { return MPI_UINT16_T; }
static inline MPI_Request goml_mpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline int goml_mpi_undefined(void) { return MPI_UNDEFINED; }
static inline MPI_Comm goml_mpi_comm_null(void) { return MPI_COMM_NULL; }
static inline int goml_mpi_mode_nocheck(void) { return MPI_MODE_NOCHECK; }

/* bfloat16 <-> float32: the one rounding (a system-library target has no dependencies, hence the path). */
#include "../CBFloat16/include/goml_bfloat16.h"

/* MPI reduction operator on bfloat16 values: each pair is added in float32, then rounded once. */
static void goml_bf16_sum(void *in, void *inout, int *count, MPI_Datatype *type) {
    (void)type;
    const uint16_t *a = (const uint16_t *)in;
    uint16_t *b = (uint16_t *)inout;
    for (int i = 0; i < *count; i++) b[i] = goml_bf16_from_float(goml_bf16_to_float(a[i]) + goml_bf16_to_float(b[i]));
}
static inline MPI_Op goml_mpi_bf16_sum_op(void) {
    MPI_Op op;
    MPI_Op_create(goml_bf16_sum, 1, &op);
    return op;
}
