// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title IMorpheusDiamond
/// @notice The external interface of the Morpheus-Lumerin marketplace ("LumerinDiamond": the
///         ProviderRegistry, ModelRegistry, Marketplace, SessionRouter and Delegation facets
///         behind one address), written from its published ABI so the `morpheus` flavour of
///         the proxy-router can be built and tested without the reference sources.
/// @dev Every function selector, output shape, event (with its indexed flags and argument names)
///      and custom error here equals the reference's; tests/morpheus/test_interface_matches_reference.py
///      checks that against the reference build when one is present. Left out, because nothing
///      the proxy-router does needs them: the diamond machinery (diamondCut, the loupe), the
///      facet initialisers, the emission pools (getPools, getPool, setPoolConfig) and
///      setRegistry. Parameter names follow the reference, so keyword calls work on both.
interface IMorpheusDiamond {
    // ------------------------------------------------------------------ structs

    /// @notice A provider. `limitPeriodEarned` is what it was paid since the period began;
    ///         pay per 365-day period is capped at `stake`.
    struct Provider {
        string endpoint;
        uint256 stake;
        uint128 createdAt;
        uint128 limitPeriodEnd;
        uint256 limitPeriodEarned;
        bool isDeleted;
    }

    /// @notice A model; its id is keccak256(abi.encodePacked(owner, baseModelId)).
    struct Model {
        bytes32 ipfsCID;
        uint256 fee;
        uint256 stake;
        address owner;
        string name;
        string[] tags;
        uint128 createdAt;
        bool isDeleted;
    }

    /// @notice A bid; its id is keccak256(abi.encodePacked(provider, modelId, nonce)).
    struct Bid {
        address provider;
        bytes32 modelId;
        uint256 pricePerSecond;
        uint256 nonce;
        uint128 createdAt;
        uint128 deletedAt;
    }

    /// @notice A session; its id is keccak256(abi.encodePacked(user, provider, bidId, sessionNonce)).
    ///         closeoutType is 1 when the close was disputed (the receipt was not the provider's).
    struct Session {
        address user;
        bytes32 bidId;
        uint256 stake;
        bytes closeoutReceipt;
        uint256 closeoutType;
        uint256 providerWithdrawnAmount;
        uint128 openedAt;
        uint128 endsAt;
        uint128 closedAt;
        bool isActive;
        bool isDirectPaymentFromUser;
    }

    /// @notice A running mean and sum of squared deviations (the reference's LibSD.SD).
    struct SD {
        int64 mean;
        int64 sqSum;
    }

    /// @notice Per provider and model: means over the successful (undisputed) closes.
    struct ProviderModelStats {
        SD tpsScaled1000;
        SD ttftMs;
        uint32 totalDuration;
        uint32 successCount;
        uint32 totalCount;
    }

    /// @notice Per model: means over its providers' means.
    struct ModelStats {
        SD tpsScaled1000;
        SD ttftMs;
        SD totalDuration;
        uint32 count;
    }

    // ------------------------------------------------------------------ events

    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);

    event ProviderRegistered(address indexed provider);
    event ProviderDeregistered(address indexed provider);
    event ProviderMinimumStakeUpdated(uint256 providerMinimumStake);
    event ProviderWithdrawn(address indexed provider, uint256 amount);

    event ModelRegisteredUpdated(address indexed owner, bytes32 indexed modelId);
    event ModelDeregistered(address indexed owner, bytes32 indexed modelId);
    event ModelMinimumStakeUpdated(uint256 modelMinimumStake);

    /// @dev "Maretplace" (sic) is the reference's spelling; the topic depends on it.
    event MaretplaceFeeUpdated(uint256 bidFee);
    event MarketplaceBidPosted(address indexed provider, bytes32 indexed modelId, uint256 nonce);
    event MarketplaceBidDeleted(address indexed provider, bytes32 indexed modelId, uint256 nonce);
    event MarketplaceBidMinMaxPriceUpdated(uint256 bidMinPricePerSecond, uint256 bidMaxPricePerSecond);

    event SessionOpened(address indexed user, bytes32 indexed sessionId, address indexed providerId);
    event SessionClosed(address indexed user, bytes32 indexed sessionId, address indexed providerId);
    event UserWithdrawn(address indexed user, uint256 amount_);

    // ------------------------------------------------------------------ errors
    // Some are declared by the reference but never raised; they are here so that a revert
    // decodes to the same name on both contracts.

    error OwnableUnauthorizedAccount(address account_);
    error InsufficientRightsForOperation(address delegator, address delegatee);

    error ProviderStakeTooLow(uint256 amount, uint256 minAmount);
    error ProviderNotDeregistered();
    error ProviderNoStake();
    error ProviderNothingToWithdraw();
    error ProviderHasActiveBids();
    error ProviderNotFound();
    error ProviderHasAlreadyDeregistered();

    error ModelStakeTooLow(uint256 amount, uint256 minAmount);
    error ModelHasAlreadyDeregistered();
    error ModelNotFound();
    error ModelHasActiveBids();

    error MarketplaceProviderNotFound();
    error MarketplaceModelNotFound();
    error MarketplaceActiveBidNotFound();
    error MarketplaceBidMinPricePerSecondIsZero();
    error MarketplaceBidMinPricePerSecondIsInvalid();
    error MarketplaceBidPricePerSecondInvalid();
    error MarketplaceFeeAmountIsZero();

    error SessionProviderSignatureMismatch();
    error SessionApproveExpired();
    error SessionApprovedForAnotherChainId();
    error SessionDuplicateApproval();
    error SessionApprovedForAnotherUser();
    error SessionReceiptForAnotherChainId();
    error SessionReceiptExpired();
    error SessionTooShort();
    error SessionAlreadyClosed();
    error SessionNotEndedOrNotExist();
    error SessionProviderNothingToClaimInThisPeriod();
    error SessionBidNotFound();
    error SessionPoolIndexOutOfBounds();
    error SessionUserAmountToWithdrawIsZero();
    error SessionMaxDurationTooShort();
    error SessionStakeTooLow();

    // ------------------------------------------------------------------ ownership

    function owner() external view returns (address);
    function transferOwnership(address newOwner_) external;
    function renounceOwnership() external;

    // ------------------------------------------------------------------ delegation (read side)

    function DELEGATION_RULES_PROVIDER() external view returns (bytes32);
    function DELEGATION_RULES_MODEL() external view returns (bytes32);
    function DELEGATION_RULES_MARKETPLACE() external view returns (bytes32);
    function DELEGATION_RULES_SESSION() external view returns (bytes32);
    function getRegistry() external view returns (address);
    function isRightsDelegated(address delegatee_, address delegator_, bytes32 rights_) external view returns (bool);

    // ------------------------------------------------------------------ providers

    function providerSetMinStake(uint256 providerMinimumStake_) external;
    /// @notice Adds `amount_` to `provider_`'s stake (pulled from `provider_`) and sets its endpoint.
    function providerRegister(address provider_, uint256 amount_, string calldata endpoint_) external;
    /// @notice Returns the stake, less what was earned in the current period, if no bid is active.
    function providerDeregister(address provider_) external;
    function getProvider(address provider_) external view returns (Provider memory);
    function getProviderMinimumStake() external view returns (uint256);
    function getActiveProviders(uint256 offset_, uint256 limit_) external view returns (address[] memory, uint256);
    function getIsProviderActive(address provider_) external view returns (bool);

    // ------------------------------------------------------------------ models

    function modelSetMinStake(uint256 modelMinimumStake_) external;
    /// @notice Registers (or updates) the model keccak256(abi.encodePacked(modelOwner_, baseModelId_)).
    function modelRegister(
        address modelOwner_,
        bytes32 baseModelId_,
        bytes32 ipfsCID_,
        uint256 fee_,
        uint256 amount_,
        string calldata name_,
        string[] calldata tags_
    ) external;
    function modelDeregister(bytes32 modelId_) external;
    function getModelId(address account_, bytes32 baseModelId_) external pure returns (bytes32);
    function getModel(bytes32 modelId_) external view returns (Model memory);
    function getModelIds(uint256 offset_, uint256 limit_) external view returns (bytes32[] memory, uint256);
    function getModelMinimumStake() external view returns (uint256);
    function getActiveModelIds(uint256 offset_, uint256 limit_) external view returns (bytes32[] memory, uint256);
    function getIsModelActive(bytes32 modelId_) external view returns (bool);

    // ------------------------------------------------------------------ bids

    function setMarketplaceBidFee(uint256 bidFee_) external;
    function setMinMaxBidPricePerSecond(uint256 bidMinPricePerSecond_, uint256 bidMaxPricePerSecond_) external;
    /// @notice Posts a bid (the bid fee is pulled from `provider_`); replaces the provider's
    ///         previous bid on the same model.
    function postModelBid(address provider_, bytes32 modelId_, uint256 pricePerSecond_) external returns (bytes32);
    function deleteModelBid(bytes32 bidId_) external;
    function withdrawFee(address recipient_, uint256 amount_) external;
    function getBidId(address provider_, bytes32 modelId_, uint256 nonce_) external view returns (bytes32);
    function getProviderModelId(address provider_, bytes32 modelId_) external view returns (bytes32);
    function getBidFee() external view returns (uint256);
    function getFeeBalance() external view returns (uint256);
    function getMinMaxBidPricePerSecond() external view returns (uint256, uint256);
    function getBid(bytes32 bidId_) external view returns (Bid memory);
    function getProviderActiveBids(address provider_, uint256 offset_, uint256 limit_)
        external view returns (bytes32[] memory, uint256);
    function getModelActiveBids(bytes32 modelId_, uint256 offset_, uint256 limit_)
        external view returns (bytes32[] memory, uint256);
    function getProviderBids(address provider_, uint256 offset_, uint256 limit_)
        external view returns (bytes32[] memory, uint256);
    function getModelBids(bytes32 modelId_, uint256 offset_, uint256 limit_)
        external view returns (bytes32[] memory, uint256);
    function getToken() external view returns (address);
    function isBidActive(bytes32 bidId_) external view returns (bool);

    // ------------------------------------------------------------------ sessions

    function setMaxSessionDuration(uint128 maxSessionDuration_) external;
    /// @notice Escrows `amount_` from `user_` and opens a session on the bid the provider's
    ///         approval names: abi.encode(bytes32 bidId, uint256 chainId, address user, uint128 ts),
    ///         signed EIP-191 over its keccak256. The length comes from stakeToStipend(amount_).
    function openSession(
        address user_,
        uint256 amount_,
        bool isDirectPaymentFromUser_,
        bytes calldata approvalEncoded_,
        bytes calldata signature_
    ) external returns (bytes32);
    /// @notice Closes the session a receipt names: abi.encode(bytes32 sessionId, uint256 chainId,
    ///         uint128 ts, uint32 tpsScaled1000, uint32 ttftMs, ...); a receipt not signed by the
    ///         provider closes it as a dispute.
    function closeSession(bytes calldata receiptEncoded_, bytes calldata signature_) external;
    function claimForProvider(bytes32 sessionId_) external;
    function withdrawUserStakes(address user_, uint8 iterations_) external;
    function getSessionId(address user_, address provider_, bytes32 bidId_, uint256 sessionNonce_)
        external pure returns (bytes32);
    function getSessionEnd(uint256 amount_, uint256 pricePerSecond_, uint128 openedAt_) external view returns (uint128);
    function stakeToStipend(uint256 amount_, uint128 timestamp_) external view returns (uint256);
    function stipendToStake(uint256 stipend_, uint128 timestamp_) external view returns (uint256);
    function getUserStakesOnHold(address user_, uint8 iterations_)
        external view returns (uint256 available_, uint256 hold_);
    function getTodaysBudget(uint128 timestamp_) external view returns (uint256);
    function getComputeBalance(uint128 timestamp_) external view returns (uint256);
    function totalMORSupply(uint128 timestamp_) external view returns (uint256);
    function startOfTheDay(uint128 timestamp_) external pure returns (uint128);
    function getSession(bytes32 sessionId_) external view returns (Session memory);
    function getUserSessions(address user_, uint256 offset_, uint256 limit_)
        external view returns (bytes32[] memory, uint256);
    function getProviderSessions(address provider_, uint256 offset_, uint256 limit_)
        external view returns (bytes32[] memory, uint256);
    function getModelSessions(bytes32 modelId_, uint256 offset_, uint256 limit_)
        external view returns (bytes32[] memory, uint256);
    function getFundingAccount() external view returns (address);
    function getTotalSessions(address provider_) external view returns (uint256);
    function getProvidersTotalClaimed() external view returns (uint256);
    function getIsProviderApprovalUsed(bytes memory approval_) external view returns (bool);
    function getMaxSessionDuration() external view returns (uint128);
    function getProviderModelStats(bytes32 modelId_, address provider_)
        external view returns (ProviderModelStats memory);
    function getModelStats(bytes32 modelId_) external view returns (ModelStats memory);
}
