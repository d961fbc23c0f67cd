// swift-tools-version:6.0
import PackageDescription

// On x86-64 the Swift code is built for AVX2 and FMA (Haswell, 2013, and later; the floor
// PortabilityTests emulate), so that its elementwise kernels run 8 floats an instruction.
// CCPUFloor stops a CPU below that floor with one line before any of that code runs.
#if arch(x86_64)
let cpuFloor = ["-target-cpu", "haswell"]
#else
let cpuFloor: [String] = []
#endif

// The maths is optimised in debug builds too: the tests train real models in-process
// (GomlTrainTests), which unoptimised kernels would run tens of times slower.
// -fno-math-errno: Float.squareRoot is C's sqrtf, which may set errno, so a SIMD8's square root
// was eight calls; without errno it is one vsqrtps (the same IEEE square roots, the same bits).
let noMathErrno = ["-Xcc", "-fno-math-errno"]
let optimise: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"] + cpuFloor + noMathErrno, .when(configuration: .release)),
                                .unsafeFlags(["-O"] + cpuFloor + noMathErrno, .when(configuration: .debug))]

let package = Package(
    name: "goml-dist",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "goml-dist", targets: ["goml-dist"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CDNNL", providers: [.apt(["libdnnl-dev"])]),
        .systemLibrary(name: "CMPI", pkgConfig: "ompi-c", providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]),
        .target(name: "CStopSignal"),
        .target(name: "CCPUFloor"),
        .target(name: "CBFloat16"),
        // The bf16 products: AVX512_BF16 dot products where oneDNN reports them, their emulation on
        // other AVX-512 CPUs; never called without AVX-512.
        .target(name: "CBF16", dependencies: ["CBFloat16"], cSettings: [.unsafeFlags(["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma"])]),
        .target(name: "GomlCore", dependencies: ["CBLAS", "CDNNL", "CBF16"], swiftSettings: optimise),
        .target(name: "CCorpusGuard"),
        .target(name: "GomlIO", dependencies: ["GomlCore", "CCorpusGuard"], swiftSettings: optimise),
        // The Communicator protocol alone, so the MPI side needs neither the maths nor the trainer.
        .target(name: "GomlComm", dependencies: ["CBFloat16"], swiftSettings: optimise),
        .target(name: "GomlTrain", dependencies: ["CBFloat16", "GomlCore", "GomlIO", "GomlComm"], swiftSettings: optimise),
        .target(name: "GomlMPI", dependencies: ["CMPI", "GomlComm"], swiftSettings: optimise),
        .executableTarget(
            name: "goml-dist",
            dependencies: [
                "GomlCore", "GomlIO", "GomlComm", "GomlTrain", "GomlMPI", "CStopSignal", "CCPUFloor",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: optimise
        ),
        .testTarget(name: "GomlCoreTests", dependencies: ["GomlCore", "CBFloat16"]),
        .testTarget(name: "GomlIOTests", dependencies: ["GomlIO"]),
        .testTarget(name: "GomlTrainTests", dependencies: ["CBFloat16", "GomlComm", "GomlCore", "GomlIO", "GomlTrain"]),
        .testTarget(name: "EndToEndTests", dependencies: ["GomlCore", "GomlIO"]),
    ],
    // The numerical code shares raw buffers single-threaded; Swift 6's strict concurrency
    // checking would only add annotations here.
    swiftLanguageModes: [.v5]
)
