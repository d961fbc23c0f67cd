import CMPI
import GomlComm

/// One non-blocking collective over OpenMPI. Persistent ones (MPIX_*_init, libnbc's) are made on
/// their first start, so a step builds no schedule; the others are made at every start.
final class MPIRequest: CollectiveRequest {
    private let owner: MPICommunicator
    private let call: String, persistent: Bool
    private let make: (UnsafeMutablePointer<MPI_Request?>) -> Int32
    private let request = UnsafeMutablePointer<MPI_Request?>.allocate(capacity: 1)
    private var made = false
    /// Arrays MPI reads for as long as the request lives (an all-gather's counts and offsets).
    private let keptAlive: [UnsafeMutableBufferPointer<Int32>]

    init(_ owner: MPICommunicator, _ call: String, persistent: Bool, keptAlive: [UnsafeMutableBufferPointer<Int32>] = [],
         make: @escaping (UnsafeMutablePointer<MPI_Request?>) -> Int32) {
        self.owner = owner
        self.call = call
        self.persistent = persistent
        self.make = make
        self.keptAlive = keptAlive
        request.initialize(to: goml_mpi_request_null())
    }

    deinit {
        request.deallocate()
        keptAlive.forEach { $0.deallocate() }
    }

    func start() {
        guard persistent else { return owner.check(call, watched: false) { make(request) } }
        if !made {
            made = true
            owner.check(call, watched: false) { make(request) }
        }
        owner.check("MPI_Start", watched: false) { MPI_Start(request) }
    }

    func test() -> Bool {
        var flag: Int32 = 0
        owner.check("MPI_Test", watched: false) { MPI_Test(request, &flag, goml_mpi_status_ignore()) }
        return flag != 0
    }
}

extension MPICommunicator {
    private static let bf16Sum = goml_mpi_bf16_sum_op()

    private func type(_ element: WireElement) -> MPI_Datatype? { element == .float32 ? goml_mpi_float() : goml_mpi_uint16() }
    private func sum(_ element: WireElement) -> MPI_Op? { element == .float32 ? goml_mpi_sum() : Self.bf16Sum }

    public func makeAllReduceSum(_ buffer: UnsafeMutableRawPointer, count: Int, of element: WireElement) -> CollectiveRequest {
        let (type, op, comm) = (type(element), sum(element), world)
        return MPIRequest(self, "MPIX_Allreduce_init", persistent: true) {
            MPIX_Allreduce_init(goml_mpi_in_place(), buffer, Int32(count), type, op, comm, goml_mpi_info_null(), $0)
        }
    }

    public func makeReduceSum(_ buffer: UnsafeMutableRawPointer, count: Int, of element: WireElement, root: Int, persistent: Bool) -> CollectiveRequest {
        let (type, op, comm) = (type(element), sum(element), world), owns = root == rank
        // The root sums in place; the others send their values.
        let send = owns ? UnsafeRawPointer(goml_mpi_in_place()) : UnsafeRawPointer(buffer), receive = owns ? buffer : nil
        if persistent {
            return MPIRequest(self, "MPIX_Reduce_init", persistent: true) {
                MPIX_Reduce_init(send, receive, Int32(count), type, op, Int32(root), comm, goml_mpi_info_null(), $0)
            }
        }
        return MPIRequest(self, "MPI_Ireduce", persistent: false) { MPI_Ireduce(send, receive, Int32(count), type, op, Int32(root), comm, $0) }
    }

    public func makeBroadcast(_ buffer: UnsafeMutableRawPointer, count: Int, of element: WireElement, root: Int) -> CollectiveRequest {
        let (type, comm) = (type(element), world)
        return MPIRequest(self, "MPIX_Bcast_init", persistent: true) {
            MPIX_Bcast_init(buffer, Int32(count), type, Int32(root), comm, goml_mpi_info_null(), $0)
        }
    }

    public func makeAllGather(_ buffer: UnsafeMutableRawPointer, counts: [Int], of element: WireElement) -> CollectiveRequest {
        precondition(counts.count == size)
        let (type, comm) = (type(element), world)
        let counts32 = UnsafeMutableBufferPointer<Int32>.allocate(capacity: size), offsets = UnsafeMutableBufferPointer<Int32>.allocate(capacity: size)
        _ = counts32.initialize(from: counts.map { Int32($0) })
        _ = offsets.initialize(from: counts.indices.map { Int32(counts[..<$0].reduce(0, +)) })
        return MPIRequest(self, "MPIX_Allgatherv_init", persistent: true, keptAlive: [counts32, offsets]) {
            MPIX_Allgatherv_init(goml_mpi_in_place(), 0, type, buffer, counts32.baseAddress, offsets.baseAddress, type, comm,
                                 goml_mpi_info_null(), $0)
        }
    }
}
