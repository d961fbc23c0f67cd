// ProductPeak: MFU is refused, never printed, when it would exceed the measured peak, and the
// peak of each precision this CPU runs is a real rate.

import GomlCore
import XCTest

final class ProductPeakTests: XCTestCase {
    func testUtilizationAboveThePeakIsRefused() {
        XCTAssertEqual(ProductPeak.utilization(modelGFLOPS: 30, peakGFLOPS: 120), 0.25)
        XCTAssertEqual(ProductPeak.utilization(modelGFLOPS: 120, peakGFLOPS: 120), 1)
        XCTAssertNil(ProductPeak.utilization(modelGFLOPS: 146.5, peakGFLOPS: 120), "122% was printed under bf16 against the fp32 peak")
        XCTAssertNil(ProductPeak.utilization(modelGFLOPS: 30, peakGFLOPS: 0), "no peak measured")
        XCTAssertEqual(ProductPeak.describe(ProductPeak.utilization(modelGFLOPS: 30, peakGFLOPS: 120)), "MFU 25.0%")
        XCTAssertEqual(ProductPeak.describe(ProductPeak.utilization(modelGFLOPS: 146.5, peakGFLOPS: 120)), "MFU n/a")
    }

    func testPeaksAreMeasuredAtEachPrecisionThisCPURuns() throws {
        XCTAssertGreaterThan(ProductPeak.measure(.fp32, threads: 1, size: 256, repeats: 2), 1, "sgemm GFLOP/s")
        guard OneDNN.hasBF16Products else {
            throw XCTSkip("bf16 peak needs AVX-512 (bf16 products, native or emulated); oneDNN reports \(OneDNN.isaName) on this CPU")
        }
        XCTAssertGreaterThan(ProductPeak.measure(.bf16, threads: 2, size: 256, repeats: 2), 1, "bf16 GFLOP/s")
    }
}
