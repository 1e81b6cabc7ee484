// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title IMarketplace
/// @notice Public interface of the proxy-router marketplace: providers, models, bids and
///         MOR-escrowed inference sessions. Routers index the market from the events below
///         alone (every id is an indexed topic) and read details through the struct views.
/// @dev Signed blobs (both verified as EIP-191 `personal_sign` over `keccak256(blob)`):
///      approval = abi.encode(bytes32 bidId, uint256 chainId, address user, uint128 timestamp)
///      receipt  = abi.encode(bytes32 sessionId, uint256 chainId, uint128 timestamp,
///                            uint32 tpsX1000, uint32 ttftMs, uint64 promptTokens,
///                            uint64 completionTokens)
///      Timestamps are unix seconds.
interface IMarketplace {
    // ------------------------------------------------------------------ view structs

    struct Provider {
        string endpoint; // host:port of the provider's MOR-RPC listener
        uint256 stake;
        uint256 createdAt; // first registration; 0 = never registered
        uint256 activeBids;
        uint256 sessionCount; // sessions ever opened against this provider
        bool isDeleted;
    }

    struct Model {
        address owner;
        bytes32 baseModelId;
        bytes32 ipfsCID;
        uint256 stake;
        string name;
        string[] tags;
        uint256 createdAt; // 0 = unknown model
        uint256 activeBids;
        bool isDeleted;
    }

    struct Bid {
        address provider;
        bytes32 modelId;
        uint256 pricePerSecond; // MOR wei per second
        uint256 nonce; // per (provider, model)
        uint256 createdAt; // 0 = unknown bid
        uint256 deletedAt; // 0 = active
    }

    /// @dev `providerEarned` is the provider's whole share, `(min(closedAt, endsAt) - openedAt)
    ///      * pricePerSecond`; `userRefund = stake - providerEarned`; `held` is the part of
    ///      `providerEarned` not paid out yet (a disputed close, until claimed). All three are 0
    ///      while the session is open.
    struct Session {
        address user;
        address provider;
        bytes32 bidId;
        bytes32 modelId;
        uint256 stake;
        uint256 pricePerSecond;
        uint256 openedAt; // 0 = unknown session
        uint256 endsAt;
        uint256 closedAt; // 0 = open
        uint256 providerEarned;
        uint256 userRefund;
        uint256 held;
        uint256 releaseAt; // when a disputed share becomes claimable
        bool disputed;
        bool closed;
        bool claimed;
    }

    /// @dev Per (provider, model). `totalCount` counts every close; the sums cover only the
    ///      `successCount` undisputed, user-submitted receipts. mean = sum / successCount,
    ///      variance = sqSum / successCount - mean^2. Token sums saturate at 2^64-1.
    ///      Field order follows the two packed storage slots.
    struct ProviderModelStats {
        uint32 totalCount;
        uint32 successCount;
        uint64 tpsX1000Sum;
        uint64 ttftMsSum;
        uint64 promptTokensSum;
        uint96 tpsX1000SqSum;
        uint96 ttftMsSqSum;
        uint64 completionTokensSum;
    }

    // ------------------------------------------------------------------ events

    event ProviderRegistered(address indexed provider);
    event ProviderDeregistered(address indexed provider);
    event ModelRegistered(address indexed owner, bytes32 indexed modelId);
    event ModelDeregistered(address indexed owner, bytes32 indexed modelId);
    event BidPosted(address indexed provider, bytes32 indexed modelId, bytes32 indexed bidId);
    event BidDeleted(address indexed provider, bytes32 indexed modelId, bytes32 indexed bidId);
    event SessionOpened(address indexed user, bytes32 indexed sessionId, address indexed provider);
    event SessionClosed(address indexed user, bytes32 indexed sessionId, address indexed provider);
    /// @dev stake == providerEarned + userRefund; `held` (<= providerEarned) is not paid yet.
    event SessionSettled(
        bytes32 indexed sessionId, uint256 providerEarned, uint256 userRefund, uint256 held, bool disputed
    );
    event ProviderClaimed(address indexed provider, bytes32 indexed sessionId, uint256 amount);

    event ProviderMinStakeUpdated(uint256 providerMinStake);
    event ModelMinStakeUpdated(uint256 modelMinStake);
    event BidFeeUpdated(uint256 bidFee);
    event PriceBoundsUpdated(uint256 minPricePerSecond, uint256 maxPricePerSecond);
    event FeeRecipientUpdated(address feeRecipient);
    event ApprovalTtlUpdated(uint256 approvalTtl);
    event SessionDurationBoundsUpdated(uint256 minSessionDuration, uint256 maxSessionDuration);
    event DisputeWindowUpdated(uint256 disputeWindow);

    // ------------------------------------------------------------------ errors

    error ZeroAddress();
    error AmountTooLarge(uint256 amount);
    error StakeTooLow(uint256 required, uint256 given);
    error EmptyEndpoint();
    error ProviderNotRegistered();
    error ProviderHasActiveBids();
    error EmptyModelName();
    error ModelNotActive(bytes32 modelId);
    error NotModelOwner();
    error ModelHasActiveBids();
    error PriceOutOfRange(uint256 pricePerSecond, uint256 minPricePerSecond, uint256 maxPricePerSecond);
    error BidNotActive(bytes32 bidId);
    error NotBidOwner();
    error InvalidApproval();
    error InvalidApprovalSigner();
    error WrongChainId(uint256 expected, uint256 given);
    error ApprovalForAnotherUser();
    error ApprovalExpired();
    error ApprovalFromFuture();
    error ApprovalAlreadyUsed();
    error ProviderCannotBeUser();
    error SessionDurationOutOfRange(uint256 duration);
    error InvalidReceipt();
    error SessionNotFound(bytes32 sessionId);
    error SessionAlreadyClosed(bytes32 sessionId);
    error InvalidReceiptSigner();
    error NotSessionParty();
    error NotSessionProvider();
    error NothingToClaim();
    error ClaimNotReleased(uint256 releaseAt);
    error InvalidPriceBounds(uint256 minPricePerSecond, uint256 maxPricePerSecond);
    error InvalidDurationBounds(uint256 minSessionDuration, uint256 maxSessionDuration);
    error InvalidApprovalTtl();

    // ------------------------------------------------------------------ providers

    function providerRegister(uint256 amount, string calldata endpoint) external;
    function providerDeregister() external;

    // ------------------------------------------------------------------ models

    function modelRegister(
        bytes32 baseModelId,
        bytes32 ipfsCID,
        uint256 amount,
        string calldata name,
        string[] calldata tags
    ) external returns (bytes32 modelId);
    function modelDeregister(bytes32 modelId) external;

    // ------------------------------------------------------------------ bids

    function postModelBid(bytes32 modelId, uint256 pricePerSecond) external returns (bytes32 bidId);
    function deleteModelBid(bytes32 bidId) external;

    // ------------------------------------------------------------------ sessions

    function openSession(uint256 amount, bytes calldata approval, bytes calldata signature)
        external
        returns (bytes32 sessionId);
    function closeSession(bytes calldata receipt, bytes calldata signature) external;
    function claimForProvider(bytes32 sessionId) external;

    // ------------------------------------------------------------------ views

    /// @notice Approvals may be dated at most this many seconds ahead of the block (clock skew).
    function APPROVAL_FUTURE_TOLERANCE() external view returns (uint256);
    function morToken() external view returns (address);
    function feeRecipient() external view returns (address);
    function providerMinStake() external view returns (uint128);
    function modelMinStake() external view returns (uint128);
    function bidFee() external view returns (uint128);
    function minPricePerSecond() external view returns (uint96);
    function maxPricePerSecond() external view returns (uint96);
    function approvalTtl() external view returns (uint32);
    function minSessionDuration() external view returns (uint32);
    function maxSessionDuration() external view returns (uint32);
    function disputeWindow() external view returns (uint32);

    function getProvider(address provider) external view returns (Provider memory);
    function getModel(bytes32 modelId) external view returns (Model memory);
    function getBid(bytes32 bidId) external view returns (Bid memory);
    function getSession(bytes32 sessionId) external view returns (Session memory);
    function getProviderModelStats(address provider, bytes32 modelId)
        external
        view
        returns (ProviderModelStats memory);
    function getActiveBidId(address provider, bytes32 modelId) external view returns (bytes32);

    function getActiveBidsByModel(bytes32 modelId, uint256 offset, uint256 limit)
        external
        view
        returns (bytes32[] memory ids, uint256 total);
    function getActiveBidsByProvider(address provider, uint256 offset, uint256 limit)
        external
        view
        returns (bytes32[] memory ids, uint256 total);
    function getSessionsByUser(address user, uint256 offset, uint256 limit)
        external
        view
        returns (bytes32[] memory ids, uint256 total);
    function getSessionsByProvider(address provider, uint256 offset, uint256 limit)
        external
        view
        returns (bytes32[] memory ids, uint256 total);
    function getModelIds(uint256 offset, uint256 limit)
        external
        view
        returns (bytes32[] memory ids, uint256 total);
    function getProviders(uint256 offset, uint256 limit)
        external
        view
        returns (address[] memory providers, uint256 total);

    // ------------------------------------------------------------------ owner

    function setProviderMinStake(uint128 amount) external;
    function setModelMinStake(uint128 amount) external;
    function setBidFee(uint128 amount) external;
    function setPriceBounds(uint96 minPricePerSecond, uint96 maxPricePerSecond) external;
    function setFeeRecipient(address recipient) external;
    function setApprovalTtl(uint32 ttl) external;
    function setSessionDurationBounds(uint32 minDuration, uint32 maxDuration) external;
    function setDisputeWindow(uint32 window) external;
}
