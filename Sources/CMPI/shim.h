// OpenMPI's mpi.h, plus functions for the handles it defines as macros
// (Swift cannot import macros that expand to casts of global symbols).
#include <mpi.h>

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
