// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";
import {EnumerableSet} from "@openzeppelin/contracts/utils/structs/EnumerableSet.sol";

import {IMorpheusDiamond} from "./IMorpheusDiamond.sol";

/// @title MorpheusDiamondDouble
/// @notice A test double of the Morpheus-Lumerin marketplace: one plain contract with the
///         reference diamond's external interface and, call for call, its observable behaviour
///         (ids, checks and their order, revert errors, MOR movements, holds, stats), so the
///         proxy-router's `morpheus` flavour can be tested where the reference is not available.
///         Local and test chains only.
/// @dev Written from the reference's documented and measured behaviour, not from its code.
///      Deliberate differences:
///      - Writes must come from the principal itself (provider, model owner, user). The
///        reference also accepts a delegate registered in delegate.xyz; the double has no
///        registry (getRegistry() is zero, isRightsDelegated() is false), so any other caller
///        reverts InsufficientRightsForOperation(principal, caller), as it does there.
///      - Emission: the reference reads five LinearDistributionIntervalDecrease pools as of the
///        start of the given day. The double holds two constructor-set totals instead, the MOR
///        emitted outside the compute pool and the compute pool's emission, and applies the
///        reference's formulas to them: totalMORSupply = supply + providersTotalClaimed,
///        getComputeBalance = compute - providersTotalClaimed, getTodaysBudget = 1% of that,
///        stakeToStipend = amount * compute balance / (totalMORSupply * 100) and stipendToStake
///        its floor inverse. The same rounding and the same drift as providers are paid, but
///        no dependence on the day. The proxy-router only ever asks the contract for these
///        numbers, so any consistent formula serves; the deploy helper picks totals whose
///        stake/stipend ratio (about 316.7) is the reference's on base mainnet in late 2026.
///      - No pools (getPools, getPool, setPoolConfig) and no diamond machinery.
///      - Test hooks, absent from the reference, are named `double*`.
contract MorpheusDiamondDouble is IMorpheusDiamond {
    using SafeERC20 for IERC20;
    using EnumerableSet for EnumerableSet.Bytes32Set;
    using EnumerableSet for EnumerableSet.AddressSet;

    /// @dev A user's stake held after an early close, until the next UTC midnight.
    struct OnHold {
        uint256 amount;
        uint128 releaseAt;
    }

    bytes32 public constant DELEGATION_RULES_PROVIDER = keccak256("delegation.rules.provider");
    bytes32 public constant DELEGATION_RULES_MODEL = keccak256("delegation.rules.model");
    bytes32 public constant DELEGATION_RULES_MARKETPLACE = keccak256("delegation.rules.marketplace");
    bytes32 public constant DELEGATION_RULES_SESSION = keccak256("delegation.rules.session");

    uint128 private constant _REWARD_LIMIT_PERIOD = 365 days;
    uint32 private constant _MIN_SESSION_DURATION = 5 minutes;
    /// @dev Compared with the approval's and the receipt's timestamp as seconds, as the
    ///      reference does: a millisecond stamp (what the proxy-router signs) never expires.
    uint32 private constant _SIGNATURE_TTL = 10 minutes;

    IERC20 private immutable _token;

    address private _owner;
    address private _fundingAccount;
    uint128 private _maxSessionDuration;

    uint256 private _providerMinimumStake;
    uint256 private _modelMinimumStake;
    uint256 private _bidFee;
    uint256 private _feeBalance;
    uint256 private _bidMinPricePerSecond;
    uint256 private _bidMaxPricePerSecond;

    uint256 private _morSupply; // MOR emitted outside the compute pool (the four other pools)
    uint256 private _computeEmission; // MOR emitted by the compute pool
    uint256 private _providersTotalClaimed;
    uint256 private _sessionNonce;

    mapping(address provider => Provider) private _providers;
    EnumerableSet.AddressSet private _activeProviders;

    mapping(bytes32 modelId => Model) private _models;
    EnumerableSet.Bytes32Set private _modelIds;
    EnumerableSet.Bytes32Set private _activeModels;

    mapping(bytes32 bidId => Bid) private _bids;
    mapping(bytes32 providerModelId => uint256) private _nextBidNonce;
    mapping(address provider => EnumerableSet.Bytes32Set) private _providerBids;
    mapping(address provider => EnumerableSet.Bytes32Set) private _providerActiveBids;
    mapping(bytes32 modelId => EnumerableSet.Bytes32Set) private _modelBids;
    mapping(bytes32 modelId => EnumerableSet.Bytes32Set) private _modelActiveBids;

    mapping(bytes32 sessionId => Session) private _sessions;
    mapping(address user => EnumerableSet.Bytes32Set) private _userSessions;
    mapping(address provider => EnumerableSet.Bytes32Set) private _providerSessions;
    mapping(bytes32 modelId => EnumerableSet.Bytes32Set) private _modelSessions;
    mapping(address user => OnHold[]) private _onHold;
    mapping(bytes32 approvalHash => bool) private _approvalUsed;

    mapping(bytes32 modelId => mapping(address provider => ProviderModelStats)) private _providerModelStats;
    mapping(bytes32 modelId => ModelStats) private _modelStats;

    modifier onlyOwner() {
        if (msg.sender != _owner) revert OwnableUnauthorizedAccount(msg.sender);
        _;
    }

    /// @param token_ The MOR token.
    /// @param fundingAccount_ Pays providers of stake-mode sessions (needs an allowance to this contract).
    /// @param maxSessionDuration_ Longest session, seconds (at least 5 minutes).
    /// @param morSupply_ MOR emitted outside the compute pool (see the contract's notes).
    /// @param computeEmission_ MOR emitted by the compute pool.
    constructor(
        address token_,
        address fundingAccount_,
        uint128 maxSessionDuration_,
        uint256 providerMinimumStake_,
        uint256 modelMinimumStake_,
        uint256 bidFee_,
        uint256 bidMinPricePerSecond_,
        uint256 bidMaxPricePerSecond_,
        uint256 morSupply_,
        uint256 computeEmission_
    ) {
        _token = IERC20(token_);
        _transferOwnership(msg.sender);
        _fundingAccount = fundingAccount_;
        _setMaxSessionDuration(maxSessionDuration_);
        _providerMinimumStake = providerMinimumStake_;
        emit ProviderMinimumStakeUpdated(providerMinimumStake_);
        _modelMinimumStake = modelMinimumStake_;
        emit ModelMinimumStakeUpdated(modelMinimumStake_);
        _bidFee = bidFee_;
        emit MaretplaceFeeUpdated(bidFee_);
        _setBidPriceRange(bidMinPricePerSecond_, bidMaxPricePerSecond_);
        _morSupply = morSupply_;
        _computeEmission = computeEmission_;
    }

    // ================================================================== test hooks (not in the reference)

    /// @notice Test hook: another funding account (the reference fixes it at initialisation).
    function doubleSetFundingAccount(address fundingAccount_) external onlyOwner {
        _fundingAccount = fundingAccount_;
    }

    /// @notice Test hook: other emission totals, e.g. to model another day's stake/stipend ratio.
    function doubleSetEmission(uint256 morSupply_, uint256 computeEmission_) external onlyOwner {
        _morSupply = morSupply_;
        _computeEmission = computeEmission_;
    }

    /// @notice Test hook: the emission totals the formulas start from.
    function doubleEmission() external view returns (uint256 morSupply, uint256 computeEmission) {
        return (_morSupply, _computeEmission);
    }

    // ================================================================== ownership

    function owner() external view returns (address) {
        return _owner;
    }

    function transferOwnership(address newOwner_) external onlyOwner {
        require(newOwner_ != address(0), "DiamondOwnable: zero address owner");
        _transferOwnership(newOwner_);
    }

    function renounceOwnership() external onlyOwner {
        _transferOwnership(address(0));
    }

    function _transferOwnership(address newOwner_) private {
        emit OwnershipTransferred(_owner, newOwner_);
        _owner = newOwner_;
    }

    // ================================================================== delegation (none)

    /// @notice Always zero: the double has no delegate registry.
    function getRegistry() external pure returns (address) {
        return address(0);
    }

    /// @notice Always false: only the principal itself may act.
    function isRightsDelegated(address, address, bytes32) external pure returns (bool) {
        return false;
    }

    /// @dev The reference's access rule without its delegation branch.
    function _onlyPrincipal(address principal_) private view {
        if (msg.sender != principal_) revert InsufficientRightsForOperation(principal_, msg.sender);
    }

    // ================================================================== providers

    function providerSetMinStake(uint256 providerMinimumStake_) external onlyOwner {
        _providerMinimumStake = providerMinimumStake_;
        emit ProviderMinimumStakeUpdated(providerMinimumStake_);
    }

    function providerRegister(address provider_, uint256 amount_, string calldata endpoint_) external {
        _onlyPrincipal(provider_);
        // The stake moves before the minimum is checked (a missing allowance is reported first).
        if (amount_ > 0) _token.safeTransferFrom(provider_, address(this), amount_);

        Provider storage provider = _providers[provider_];
        uint256 stake_ = provider.stake + amount_;
        if (stake_ < _providerMinimumStake) revert ProviderStakeTooLow(stake_, _providerMinimumStake);

        if (provider.createdAt == 0) {
            provider.createdAt = uint128(block.timestamp);
            provider.limitPeriodEnd = uint128(block.timestamp) + _REWARD_LIMIT_PERIOD;
        } else if (provider.isDeleted) {
            provider.isDeleted = false;
        }
        provider.endpoint = endpoint_;
        provider.stake = stake_;
        _activeProviders.add(provider_);

        emit ProviderRegistered(provider_);
    }

    function providerDeregister(address provider_) external {
        _onlyPrincipal(provider_);
        Provider storage provider = _providers[provider_];
        if (provider.createdAt == 0) revert ProviderNotFound();
        if (_providerActiveBids[provider_].length() != 0) revert ProviderHasActiveBids();
        if (provider.isDeleted) revert ProviderHasAlreadyDeregistered();

        // What was earned in the running period stays staked until the period ends.
        uint256 amount_ = block.timestamp > provider.limitPeriodEnd
            ? provider.stake
            : provider.stake - provider.limitPeriodEarned;
        provider.stake -= amount_;
        provider.isDeleted = true;
        _activeProviders.remove(provider_);
        if (amount_ > 0) _token.safeTransfer(provider_, amount_);

        emit ProviderDeregistered(provider_);
    }

    function getProvider(address provider_) external view returns (Provider memory) {
        return _providers[provider_];
    }

    function getProviderMinimumStake() external view returns (uint256) {
        return _providerMinimumStake;
    }

    function getActiveProviders(uint256 offset_, uint256 limit_) external view returns (address[] memory, uint256) {
        uint256 total_ = _activeProviders.length();
        (uint256 from_, uint256 to_) = _window(total_, offset_, limit_);
        address[] memory page_ = new address[](to_ - from_);
        for (uint256 i = from_; i < to_; ++i) {
            page_[i - from_] = _activeProviders.at(i);
        }
        return (page_, total_);
    }

    function getIsProviderActive(address provider_) public view returns (bool) {
        Provider storage provider = _providers[provider_];
        return provider.createdAt != 0 && !provider.isDeleted;
    }

    // ================================================================== models

    function modelSetMinStake(uint256 modelMinimumStake_) external onlyOwner {
        _modelMinimumStake = modelMinimumStake_;
        emit ModelMinimumStakeUpdated(modelMinimumStake_);
    }

    function modelRegister(
        address modelOwner_,
        bytes32 baseModelId_,
        bytes32 ipfsCID_,
        uint256 fee_,
        uint256 amount_,
        string calldata name_,
        string[] memory tags_
    ) external {
        _onlyPrincipal(modelOwner_);
        bytes32 modelId_ = getModelId(modelOwner_, baseModelId_);
        Model storage model = _models[modelId_];

        // Unlike providerRegister, the minimum is checked before the stake moves.
        uint256 stake_ = model.stake + amount_;
        if (stake_ < _modelMinimumStake) revert ModelStakeTooLow(stake_, _modelMinimumStake);
        if (amount_ > 0) _token.safeTransferFrom(modelOwner_, address(this), amount_);

        if (model.createdAt == 0) {
            _modelIds.add(modelId_);
            model.createdAt = uint128(block.timestamp);
            model.owner = modelOwner_;
        }
        model.stake = stake_;
        model.ipfsCID = ipfsCID_;
        model.fee = fee_;
        model.name = name_;
        model.tags = tags_;
        model.isDeleted = false;
        _activeModels.add(modelId_);

        emit ModelRegisteredUpdated(modelOwner_, modelId_);
    }

    function modelDeregister(bytes32 modelId_) external {
        Model storage model = _models[modelId_];
        _onlyPrincipal(model.owner);
        if (_modelActiveBids[modelId_].length() != 0) revert ModelHasActiveBids();
        if (model.isDeleted) revert ModelHasAlreadyDeregistered();

        uint256 amount_ = model.stake;
        model.stake = 0;
        model.isDeleted = true;
        _activeModels.remove(modelId_);
        _token.safeTransfer(model.owner, amount_);

        emit ModelDeregistered(model.owner, modelId_);
    }

    function getModelId(address account_, bytes32 baseModelId_) public pure returns (bytes32) {
        return keccak256(abi.encodePacked(account_, baseModelId_));
    }

    function getModel(bytes32 modelId_) external view returns (Model memory) {
        return _models[modelId_];
    }

    function getModelIds(uint256 offset_, uint256 limit_) external view returns (bytes32[] memory, uint256) {
        return _page(_modelIds, offset_, limit_);
    }

    function getModelMinimumStake() external view returns (uint256) {
        return _modelMinimumStake;
    }

    function getActiveModelIds(uint256 offset_, uint256 limit_) external view returns (bytes32[] memory, uint256) {
        return _page(_activeModels, offset_, limit_);
    }

    function getIsModelActive(bytes32 modelId_) public view returns (bool) {
        Model storage model = _models[modelId_];
        return model.createdAt != 0 && !model.isDeleted;
    }

    // ================================================================== bids

    function setMarketplaceBidFee(uint256 bidFee_) external onlyOwner {
        _bidFee = bidFee_;
        emit MaretplaceFeeUpdated(bidFee_);
    }

    function setMinMaxBidPricePerSecond(uint256 bidMinPricePerSecond_, uint256 bidMaxPricePerSecond_)
        external
        onlyOwner
    {
        _setBidPriceRange(bidMinPricePerSecond_, bidMaxPricePerSecond_);
    }

    function _setBidPriceRange(uint256 min_, uint256 max_) private {
        if (min_ == 0) revert MarketplaceBidMinPricePerSecondIsZero();
        if (min_ > max_) revert MarketplaceBidMinPricePerSecondIsInvalid();
        _bidMinPricePerSecond = min_;
        _bidMaxPricePerSecond = max_;
        emit MarketplaceBidMinMaxPriceUpdated(min_, max_);
    }

    function postModelBid(address provider_, bytes32 modelId_, uint256 pricePerSecond_) external returns (bytes32) {
        _onlyPrincipal(provider_);
        if (!getIsProviderActive(provider_)) revert MarketplaceProviderNotFound();
        if (!getIsModelActive(modelId_)) revert MarketplaceModelNotFound();
        if (pricePerSecond_ < _bidMinPricePerSecond || pricePerSecond_ > _bidMaxPricePerSecond) {
            revert MarketplaceBidPricePerSecondInvalid();
        }

        _token.safeTransferFrom(provider_, address(this), _bidFee);
        _feeBalance += _bidFee;

        uint256 nonce_ = _nextBidNonce[getProviderModelId(provider_, modelId_)]++;
        bytes32 bidId_ = getBidId(provider_, modelId_, nonce_);
        if (nonce_ != 0) {
            // A new bid replaces the provider's previous one on this model.
            bytes32 previous_ = getBidId(provider_, modelId_, nonce_ - 1);
            if (isBidActive(previous_)) _deleteBid(previous_);
        }

        Bid storage bid = _bids[bidId_];
        bid.provider = provider_;
        bid.modelId = modelId_;
        bid.pricePerSecond = pricePerSecond_;
        bid.nonce = nonce_;
        bid.createdAt = uint128(block.timestamp);
        _providerBids[provider_].add(bidId_);
        _providerActiveBids[provider_].add(bidId_);
        _modelBids[modelId_].add(bidId_);
        _modelActiveBids[modelId_].add(bidId_);

        emit MarketplaceBidPosted(provider_, modelId_, nonce_);
        return bidId_;
    }

    function deleteModelBid(bytes32 bidId_) external {
        _onlyPrincipal(_bids[bidId_].provider);
        if (!isBidActive(bidId_)) revert MarketplaceActiveBidNotFound();
        _deleteBid(bidId_);
    }

    function _deleteBid(bytes32 bidId_) private {
        Bid storage bid = _bids[bidId_];
        bid.deletedAt = uint128(block.timestamp);
        _providerActiveBids[bid.provider].remove(bidId_);
        _modelActiveBids[bid.modelId].remove(bidId_);
        emit MarketplaceBidDeleted(bid.provider, bid.modelId, bid.nonce);
    }

    function withdrawFee(address recipient_, uint256 amount_) external onlyOwner {
        if (amount_ > _feeBalance) amount_ = _feeBalance;
        if (amount_ == 0) revert MarketplaceFeeAmountIsZero();
        _feeBalance -= amount_;
        _token.safeTransfer(recipient_, amount_);
    }

    function getBidId(address provider_, bytes32 modelId_, uint256 nonce_) public pure returns (bytes32) {
        return keccak256(abi.encodePacked(provider_, modelId_, nonce_));
    }

    function getProviderModelId(address provider_, bytes32 modelId_) public pure returns (bytes32) {
        return keccak256(abi.encodePacked(provider_, modelId_));
    }

    function getBidFee() external view returns (uint256) {
        return _bidFee;
    }

    function getFeeBalance() external view returns (uint256) {
        return _feeBalance;
    }

    function getMinMaxBidPricePerSecond() external view returns (uint256, uint256) {
        return (_bidMinPricePerSecond, _bidMaxPricePerSecond);
    }

    function getBid(bytes32 bidId_) external view returns (Bid memory) {
        return _bids[bidId_];
    }

    function getProviderActiveBids(address provider_, uint256 offset_, uint256 limit_)
        external
        view
        returns (bytes32[] memory, uint256)
    {
        return _page(_providerActiveBids[provider_], offset_, limit_);
    }

    function getModelActiveBids(bytes32 modelId_, uint256 offset_, uint256 limit_)
        external
        view
        returns (bytes32[] memory, uint256)
    {
        return _page(_modelActiveBids[modelId_], offset_, limit_);
    }

    function getProviderBids(address provider_, uint256 offset_, uint256 limit_)
        external
        view
        returns (bytes32[] memory, uint256)
    {
        return _page(_providerBids[provider_], offset_, limit_);
    }

    function getModelBids(bytes32 modelId_, uint256 offset_, uint256 limit_)
        external
        view
        returns (bytes32[] memory, uint256)
    {
        return _page(_modelBids[modelId_], offset_, limit_);
    }

    function getToken() external view returns (address) {
        return address(_token);
    }

    function isBidActive(bytes32 bidId_) public view returns (bool) {
        Bid storage bid = _bids[bidId_];
        return bid.createdAt != 0 && bid.deletedAt == 0;
    }

    // ================================================================== sessions: open

    function setMaxSessionDuration(uint128 maxSessionDuration_) external onlyOwner {
        _setMaxSessionDuration(maxSessionDuration_);
    }

    function _setMaxSessionDuration(uint128 maxSessionDuration_) private {
        if (maxSessionDuration_ < _MIN_SESSION_DURATION) revert SessionMaxDurationTooShort();
        _maxSessionDuration = maxSessionDuration_;
    }

    function openSession(
        address user_,
        uint256 amount_,
        bool isDirectPaymentFromUser_,
        bytes calldata approvalEncoded_,
        bytes calldata signature_
    ) external returns (bytes32) {
        _onlyPrincipal(user_);
        bytes32 bidId_ = _readApproval(approvalEncoded_);
        Bid storage bid = _bids[bidId_];
        bytes32 sessionId_ = getSessionId(user_, bid.provider, bidId_, _sessionNonce++);

        // As in the reference, the stake moves before the bid and the approval are checked.
        _token.safeTransferFrom(user_, address(this), amount_);

        Session storage session = _sessions[sessionId_];
        session.user = user_;
        session.stake = amount_;
        session.bidId = bidId_;
        session.openedAt = uint128(block.timestamp);
        session.endsAt = _checkedSessionEnd(bid, bidId_, amount_, isDirectPaymentFromUser_, approvalEncoded_, signature_);
        session.isActive = true;
        session.isDirectPaymentFromUser = isDirectPaymentFromUser_;

        _userSessions[user_].add(sessionId_);
        _providerSessions[bid.provider].add(sessionId_);
        _modelSessions[bid.modelId].add(sessionId_);
        _approvalUsed[keccak256(approvalEncoded_)] = true;

        emit SessionOpened(user_, sessionId_, bid.provider);
        return sessionId_;
    }

    /// @dev approval = abi.encode(bytes32 bidId, uint256 chainId, address user, uint128 ts); the
    ///      user named in it is not checked (neither is it by the reference).
    function _readApproval(bytes calldata approval_) private view returns (bytes32) {
        (bytes32 bidId_, uint256 chainId_, , uint128 timestamp_) =
            abi.decode(approval_, (bytes32, uint256, address, uint128));
        if (chainId_ != block.chainid) revert SessionApprovedForAnotherChainId();
        if (block.timestamp > timestamp_ + _SIGNATURE_TTL) revert SessionApproveExpired();
        return bidId_;
    }

    function _checkedSessionEnd(
        Bid storage bid,
        bytes32 bidId_,
        uint256 amount_,
        bool isDirectPaymentFromUser_,
        bytes calldata approval_,
        bytes calldata signature_
    ) private view returns (uint128) {
        if (!isBidActive(bidId_)) revert SessionBidNotFound();
        if (!_isProviderSignature(bid.provider, approval_, signature_)) revert SessionProviderSignatureMismatch();
        if (_approvalUsed[keccak256(approval_)]) revert SessionDuplicateApproval();

        uint128 endsAt_ = getSessionEnd(amount_, bid.pricePerSecond, uint128(block.timestamp));
        uint128 duration_ = endsAt_ - uint128(block.timestamp);
        if (duration_ < _MIN_SESSION_DURATION) revert SessionTooShort();
        if (isDirectPaymentFromUser_ && duration_ * bid.pricePerSecond > amount_) revert SessionStakeTooLow();
        return endsAt_;
    }

    function getSessionId(address user_, address provider_, bytes32 bidId_, uint256 sessionNonce_)
        public
        pure
        returns (bytes32)
    {
        return keccak256(abi.encodePacked(user_, provider_, bidId_, sessionNonce_));
    }

    /// @notice The session length is the stipend the stake buys, divided by the price: in both
    ///         payment modes (so a direct-payment stake of price * duration buys ~1/316 of that).
    function getSessionEnd(uint256 amount_, uint256 pricePerSecond_, uint128 openedAt_) public view returns (uint128) {
        uint128 duration_ = uint128(stakeToStipend(amount_, openedAt_) / pricePerSecond_);
        if (duration_ > _maxSessionDuration) duration_ = _maxSessionDuration;
        return openedAt_ + duration_;
    }

    // ================================================================== sessions: close and pay

    function closeSession(bytes calldata receiptEncoded_, bytes calldata signature_) external {
        (bytes32 sessionId_, uint32 tpsScaled1000_, uint32 ttftMs_) = _readReceipt(receiptEncoded_);
        Session storage session = _sessions[sessionId_];
        Bid storage bid = _bids[session.bidId];
        _onlyPrincipal(session.user);
        if (session.closedAt != 0) revert SessionAlreadyClosed();

        session.isActive = false;
        session.closeoutReceipt = receiptEncoded_;
        session.closedAt = uint128(block.timestamp);

        // A receipt the provider did not sign (e.g. the user's own) closes the session as a dispute.
        bool undisputed_ = _isProviderSignature(bid.provider, receiptEncoded_, signature_);
        _refundUser(session, bid);
        _payProviderAtClose(undisputed_, session, bid);
        _recordStats(undisputed_, tpsScaled1000_, ttftMs_, session, bid);

        emit SessionClosed(session.user, sessionId_, bid.provider);
    }

    /// @dev receipt = abi.encode(bytes32 sessionId, uint256 chainId, uint128 ts, uint32 tpsScaled1000,
    ///      uint32 ttftMs[, uint32 inputTokens, uint32 outputTokens]): only the first five are read.
    function _readReceipt(bytes calldata receipt_) private view returns (bytes32, uint32, uint32) {
        (bytes32 sessionId_, uint256 chainId_, uint128 timestamp_, uint32 tpsScaled1000_, uint32 ttftMs_) =
            abi.decode(receipt_, (bytes32, uint256, uint128, uint32, uint32));
        if (chainId_ != block.chainid) revert SessionReceiptForAnotherChainId();
        if (block.timestamp > timestamp_ + _SIGNATURE_TTL) revert SessionReceiptExpired();
        return (sessionId_, tpsScaled1000_, ttftMs_);
    }

    /// @dev The stake less the provider's share (direct payment only) goes back to the user, except,
    ///      on an early close, the stake that today's used time is worth (stipendToStake of it as of
    ///      the start of the day), held until the next UTC midnight.
    function _refundUser(Session storage session, Bid storage bid) private {
        uint128 dayStart_ = startOfTheDay(session.closedAt);
        uint256 refund_ = session.stake - (session.isDirectPaymentFromUser ? _providerReward(session, bid, false) : 0);
        uint256 held_ = 0;
        if (session.closedAt < session.endsAt) {
            uint256 usedToday_ = session.closedAt - _max(session.openedAt, dayStart_);
            held_ = _min(refund_, stipendToStake(usedToday_ * bid.pricePerSecond, dayStart_));
            _onHold[session.user].push(OnHold(held_, dayStart_ + 1 days));
        }
        _token.safeTransfer(session.user, refund_ - held_);
    }

    /// @dev The provider is paid for the time used; a disputed early close holds back today's part.
    function _payProviderAtClose(bool undisputed_, Session storage session, Bid storage bid) private {
        uint256 amount_ = _providerReward(session, bid, true);
        if (!undisputed_ && session.closedAt < session.endsAt) amount_ -= _providerHold(session, bid);
        _payProvider(session, bid, amount_);
    }

    /// @notice Pays the provider what the session earned and was not paid yet.
    /// @dev Kept from the reference: the claim is `unpaid - held`, where held is the close day's
    ///      share, (closedAt - max(openedAt, start of that day)) * price, until the next UTC
    ///      midnight, whether or not the close paid it. An undisputed close pays in full, so a
    ///      claim later that day computes 0 - share and reverts Panic(0x11) (checked arithmetic);
    ///      after midnight the share is 0 and the claim pays what is still unpaid (e.g. what the
    ///      stake cap held back).
    function claimForProvider(bytes32 sessionId_) external {
        Session storage session = _sessions[sessionId_];
        Bid storage bid = _bids[session.bidId];
        _onlyPrincipal(bid.provider);
        _payProvider(session, bid, _providerReward(session, bid, true) - _providerHold(session, bid));
    }

    /// @dev (end - openedAt) * price, zero before the session's end (closedAt if closed early);
    ///      `net_` subtracts what was already paid.
    function _providerReward(Session storage session, Bid storage bid, bool net_) private view returns (uint256) {
        uint256 end_ = session.closedAt == 0 ? session.endsAt : _min(session.closedAt, session.endsAt);
        if (block.timestamp < end_) return 0;
        return (end_ - session.openedAt) * bid.pricePerSecond - (net_ ? session.providerWithdrawnAmount : 0);
    }

    /// @dev The close day's share of the session, until the next UTC midnight; zero afterwards.
    function _providerHold(Session storage session, Bid storage bid) private view returns (uint256) {
        uint128 dayStart_ = startOfTheDay(session.closedAt);
        if (block.timestamp >= dayStart_ + 1 days) return 0;
        return (session.closedAt - _max(dayStart_, session.openedAt)) * bid.pricePerSecond;
    }

    /// @dev Pays at most the provider's stake per 365-day period: from this contract (the user's
    ///      escrow) for direct payment, else from the funding account by transferFrom.
    function _payProvider(Session storage session, Bid storage bid, uint256 amount_) private {
        Provider storage provider = _providers[bid.provider];
        if (block.timestamp > provider.limitPeriodEnd) {
            provider.limitPeriodEnd = uint128(block.timestamp) + _REWARD_LIMIT_PERIOD;
            provider.limitPeriodEarned = 0;
        }
        amount_ = _min(amount_, provider.stake - provider.limitPeriodEarned);
        if (amount_ == 0) return;

        session.providerWithdrawnAmount += amount_;
        provider.limitPeriodEarned += amount_;
        _providersTotalClaimed += amount_;
        if (session.isDirectPaymentFromUser) {
            _token.safeTransfer(bid.provider, amount_);
        } else {
            _token.safeTransferFrom(_fundingAccount, bid.provider, amount_);
        }
    }

    // ================================================================== stats

    /// @dev Running means (and sums of squared deviations) over undisputed closes, per provider
    ///      and model, and per model over its providers' means; with the reference's integer
    ///      widths, truncating conversions and order of updates.
    function _recordStats(
        bool undisputed_,
        uint32 tpsScaled1000_,
        uint32 ttftMs_,
        Session storage session,
        Bid storage bid
    ) private {
        ProviderModelStats storage pair = _providerModelStats[bid.modelId][bid.provider];
        ModelStats storage model = _modelStats[bid.modelId];
        pair.totalCount++;
        if (!undisputed_) {
            session.closeoutType = 1;
            return;
        }

        if (pair.successCount > 0) {
            // The pair's old means leave the model's means before its new ones enter.
            _removeSample(model.tpsScaled1000, int32(pair.tpsScaled1000.mean), int32(model.count - 1));
            _removeSample(model.ttftMs, int32(pair.ttftMs.mean), int32(model.count - 1));
        } else {
            model.count++;
        }

        pair.successCount++;
        pair.totalDuration += uint32(session.closedAt - session.openedAt);
        _addSample(pair.tpsScaled1000, int32(tpsScaled1000_), int32(pair.successCount));
        _addSample(pair.ttftMs, int32(ttftMs_), int32(pair.successCount));

        _addSample(model.totalDuration, int32(pair.totalDuration), int32(model.count));
        _addSample(model.tpsScaled1000, int32(pair.tpsScaled1000.mean), int32(model.count));
        _addSample(model.ttftMs, int32(pair.ttftMs.mean), int32(model.count));
    }

    /// @dev Welford's update with `count_` samples after adding `x_`.
    function _addSample(SD storage sd, int64 x_, int64 count_) private {
        int64 before_ = sd.mean;
        int64 after_ = before_ + (x_ - before_) / count_;
        sd.mean = after_;
        sd.sqSum = sd.sqSum + (x_ - after_) * (x_ - before_);
    }

    /// @dev The inverse update, `count_` samples remaining; none left resets.
    function _removeSample(SD storage sd, int64 x_, int64 count_) private {
        if (count_ == 0) {
            sd.mean = 0;
            sd.sqSum = 0;
            return;
        }
        int64 before_ = sd.mean;
        int64 after_ = before_ - (x_ - before_) / count_;
        sd.mean = after_;
        sd.sqSum = sd.sqSum - (x_ - after_) * (x_ - before_);
    }

    function getProviderModelStats(bytes32 modelId_, address provider_)
        external
        view
        returns (ProviderModelStats memory)
    {
        return _providerModelStats[modelId_][provider_];
    }

    function getModelStats(bytes32 modelId_) external view returns (ModelStats memory) {
        return _modelStats[modelId_];
    }

    // ================================================================== user holds

    /// @notice Held stake: released (available_) and not yet (hold_); all entries are summed,
    ///         whatever `iterations_` says (as in the reference).
    function getUserStakesOnHold(address user_, uint8)
        external
        view
        returns (uint256 available_, uint256 hold_)
    {
        OnHold[] storage entries = _onHold[user_];
        for (uint256 i = 0; i < entries.length; ++i) {
            if (block.timestamp < entries[i].releaseAt) hold_ += entries[i].amount;
            else available_ += entries[i].amount;
        }
    }

    /// @notice Pays out up to `iterations_` released entries, scanning from the newest.
    function withdrawUserStakes(address user_, uint8 iterations_) external {
        _onlyPrincipal(user_);
        OnHold[] storage entries = _onHold[user_];
        uint256 length_ = entries.length;
        uint256 budget_ = iterations_ < length_ ? iterations_ : length_;
        if (budget_ == 0) revert SessionUserAmountToWithdrawIsZero();

        uint256 amount_ = 0;
        for (uint256 i = length_; i > 0 && budget_ > 0; --i) {
            if (block.timestamp < entries[i - 1].releaseAt) continue;
            amount_ += entries[i - 1].amount;
            entries[i - 1] = entries[entries.length - 1];
            entries.pop();
            --budget_;
        }
        if (amount_ == 0) revert SessionUserAmountToWithdrawIsZero();

        _token.safeTransfer(user_, amount_);
        emit UserWithdrawn(user_, amount_);
    }

    // ================================================================== emission

    function getTodaysBudget(uint128 timestamp_) external view returns (uint256) {
        return getComputeBalance(timestamp_) / 100;
    }

    function getComputeBalance(uint128) public view returns (uint256) {
        return _computeEmission - _providersTotalClaimed;
    }

    function totalMORSupply(uint128) public view returns (uint256) {
        return _morSupply + _providersTotalClaimed;
    }

    /// @notice The user's daily stipend a stake buys: amount * compute balance / (supply * 100).
    function stakeToStipend(uint256 amount_, uint128 timestamp_) public view returns (uint256) {
        uint256 supply_ = totalMORSupply(timestamp_);
        if (supply_ == 0) return 0;
        return (amount_ * getComputeBalance(timestamp_)) / (supply_ * 100);
    }

    /// @notice The stake that buys a stipend (floor, like the reference).
    function stipendToStake(uint256 stipend_, uint128 timestamp_) public view returns (uint256) {
        uint256 compute_ = getComputeBalance(timestamp_);
        if (compute_ == 0) return 0;
        return (stipend_ * totalMORSupply(timestamp_) * 100) / compute_;
    }

    function startOfTheDay(uint128 timestamp_) public pure returns (uint128) {
        return timestamp_ - (timestamp_ % 1 days);
    }

    // ================================================================== session views

    function getSession(bytes32 sessionId_) external view returns (Session memory) {
        return _sessions[sessionId_];
    }

    function getUserSessions(address user_, uint256 offset_, uint256 limit_)
        external
        view
        returns (bytes32[] memory, uint256)
    {
        return _page(_userSessions[user_], offset_, limit_);
    }

    function getProviderSessions(address provider_, uint256 offset_, uint256 limit_)
        external
        view
        returns (bytes32[] memory, uint256)
    {
        return _page(_providerSessions[provider_], offset_, limit_);
    }

    function getModelSessions(bytes32 modelId_, uint256 offset_, uint256 limit_)
        external
        view
        returns (bytes32[] memory, uint256)
    {
        return _page(_modelSessions[modelId_], offset_, limit_);
    }

    function getFundingAccount() external view returns (address) {
        return _fundingAccount;
    }

    function getTotalSessions(address provider_) external view returns (uint256) {
        return _providerSessions[provider_].length();
    }

    function getProvidersTotalClaimed() external view returns (uint256) {
        return _providersTotalClaimed;
    }

    function getIsProviderApprovalUsed(bytes memory approval_) external view returns (bool) {
        return _approvalUsed[keccak256(approval_)];
    }

    function getMaxSessionDuration() external view returns (uint128) {
        return _maxSessionDuration;
    }

    // ================================================================== helpers

    /// @dev EIP-191 over keccak256(blob), by the provider or, for a contract provider, its owner().
    ///      Malformed signatures revert with the reference's (OpenZeppelin 4) messages.
    function _isProviderSignature(address provider_, bytes calldata blob_, bytes calldata signature_)
        private
        view
        returns (bool)
    {
        bytes32 digest_ = MessageHashUtils.toEthSignedMessageHash(keccak256(blob_));
        (address signer_, ECDSA.RecoverError error_,) = ECDSA.tryRecover(digest_, signature_);
        if (error_ == ECDSA.RecoverError.InvalidSignature) revert("ECDSA: invalid signature");
        if (error_ == ECDSA.RecoverError.InvalidSignatureLength) revert("ECDSA: invalid signature length");
        if (error_ == ECDSA.RecoverError.InvalidSignatureS) revert("ECDSA: invalid signature 's' value");
        if (signer_ == provider_) return true;

        if (provider_.code.length > 0) {
            (bool ok_, bytes memory result_) = provider_.staticcall(abi.encodeWithSignature("owner()"));
            if (ok_ && result_.length == 32 && abi.decode(result_, (address)) == signer_) return true;
        }
        return false;
    }

    /// @dev [offset, offset + limit) clipped to [0, total), empty past the end.
    function _window(uint256 total_, uint256 offset_, uint256 limit_) private pure returns (uint256, uint256) {
        uint256 to_ = offset_ + limit_;
        if (to_ > total_) to_ = total_;
        if (offset_ > to_) to_ = offset_;
        return (offset_, to_);
    }

    function _page(EnumerableSet.Bytes32Set storage set_, uint256 offset_, uint256 limit_)
        private
        view
        returns (bytes32[] memory, uint256)
    {
        uint256 total_ = set_.length();
        (uint256 from_, uint256 to_) = _window(total_, offset_, limit_);
        bytes32[] memory page_ = new bytes32[](to_ - from_);
        for (uint256 i = from_; i < to_; ++i) {
            page_[i - from_] = set_.at(i);
        }
        return (page_, total_);
    }

    function _min(uint256 a_, uint256 b_) private pure returns (uint256) {
        return a_ < b_ ? a_ : b_;
    }

    function _max(uint256 a_, uint256 b_) private pure returns (uint256) {
        return a_ > b_ ? a_ : b_;
    }
}
